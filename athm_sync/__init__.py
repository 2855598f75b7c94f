"""django-athm-sync: keeps a Django shop's ATH Móvil payments true."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("django-athm-sync")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
