"""mlmon: a streaming quality monitor for classification models."""

__version__ = "0.1.0"
