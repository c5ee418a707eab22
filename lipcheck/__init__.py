"""lipcheck: certified and honest Lipschitz bounds for neural networks."""
from lipcheck.version import __version__  # noqa: F401  (lipcheck.__version__)

_API = ("estimate", "check", "load")


def __getattr__(name: str):
    """`lipcheck.estimate(...)`, `lipcheck.check(...)`, `lipcheck.load(...)` without importing
    torch at package import time."""
    if name in _API:
        from lipcheck import api
        return getattr(api, name)
    raise AttributeError(f"module 'lipcheck' has no attribute {name!r}")
