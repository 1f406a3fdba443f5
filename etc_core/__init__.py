"""etc-pipeline core library: data, flow, models, losses, metrics, training, tracking, storage."""
__version__ = "0.1.0"
