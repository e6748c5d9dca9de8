"""batchscope: watch long-running batches and report their state changes."""

__version__ = "0.1.0"
