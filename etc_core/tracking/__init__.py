"""Experiment tracking: the only place that calls MLflow (runs, params, metrics, pictures, registry)."""
