"""Metrics by task type, test-split predictions of every model, and the comparison across models."""
