"""Distillation of the teacher into one LightGBM student (REMEDI §3.5)."""
