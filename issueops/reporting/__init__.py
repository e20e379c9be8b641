"""Reporting a run: the status comment, run history, run results and notifications."""
