"""Evaluation: per-example `metrics`, `scoring` of models on held-out rows, and the `report` it writes."""
