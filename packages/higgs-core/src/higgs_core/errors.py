"""Errors a user can cause by pointing higgs-core at the wrong thing."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be this model: unknown layout, missing or
    unexpected weights, shapes that do not fit."""


class ModelNotFoundError(FileNotFoundError):
    """No such local directory, or a hub repo that cannot be fetched or found in
    the local cache."""
