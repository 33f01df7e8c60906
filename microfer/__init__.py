"""microfer: micro-expression recognition research toolkit."""
__version__ = "0.1.0"
