"""Evaluation report: paper-style tables, figures and a JSON of every number for a pipeline run."""
