"""higgs_core."""

from importlib.metadata import version as _version

__version__ = _version("higgs-core")
