"""Evaluation: every method's rankings on the same queries, metrics, paired statistics, reports (no Ray)."""
