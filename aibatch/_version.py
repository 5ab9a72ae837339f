"""The version of aibatch: a leaf module, so nothing inside the package imports its root."""

__version__ = "0.1.0"
