"""synthgen: synthetic medical images people can trust."""

__version__ = "0.1.0"
