"""Scoring every owner of a month with the distilled student."""
