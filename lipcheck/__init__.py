"""lipcheck: certified and honest Lipschitz bounds for neural networks."""
__version__ = "0.1.0"
