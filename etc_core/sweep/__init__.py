"""Ray Tune sweeps over the ETC loss weights and training knobs (pipelines/sweep.py)."""
