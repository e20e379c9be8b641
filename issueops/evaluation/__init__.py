"""Evaluation of every learning type (metrics and plots) and the judge that decides pass or fail."""
