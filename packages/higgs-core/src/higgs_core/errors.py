"""Errors a user can cause by pointing higgs-core at the wrong thing."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be this model: unknown layout, missing or
    unexpected weights, shapes that do not fit."""


class ModelNotFoundError(FileNotFoundError):
    """No such local directory, or a hub repo that cannot be fetched or found in
    the local cache (``repo_id`` says which)."""

    def __init__(self, message: str, *, repo_id: str | None = None):
        super().__init__(message)
        self.repo_id = repo_id

    def __str__(self) -> str:
        return str(self.args[0])
