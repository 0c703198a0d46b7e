"""dapi: the API node a gonka participant runs in front of its ML nodes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dapi")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
