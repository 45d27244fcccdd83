"""higgs_cli: the `higgs` command and the whole-pipeline Python API."""

from importlib.metadata import version as _version

__version__ = _version("higgs-cli")


def __getattr__(name):
    # The pipeline pulls in MLX and the models; import it only when asked for.
    if name in ("Higgs", "Speech", "HiggsError"):
        from higgs_cli import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
