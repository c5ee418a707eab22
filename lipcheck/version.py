"""The version of lipcheck: a leaf module, so that anything may import it without a circle
through the package's lazy API (lipcheck/__init__.py)."""
__version__ = "0.1.0"
