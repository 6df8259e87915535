"""fraudstream: a real-time fraud decision engine for payment processors."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fraudstream")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
