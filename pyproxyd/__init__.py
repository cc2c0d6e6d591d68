"""pyproxyd: a config-driven API gateway for Python shops."""

__version__ = "0.1.0"
