"""The exceptions a user of the codec can cause."""


class CodecError(ValueError):
    """Bad audio, bad codes or a checkpoint that cannot be used."""


class CodecFileNotFoundError(CodecError, FileNotFoundError):
    """A file or directory the codec was pointed at does not exist."""


class CodecNotFoundError(CodecFileNotFoundError):
    """No such codec directory, or a hub repo that cannot be fetched or found in the
    local cache (``repo_id`` says which); ``what`` is "codec" or the HuBERT teacher."""

    def __init__(self, message: str, *, repo_id: str | None = None, what: str = "codec"):
        super().__init__(message)
        self.repo_id = repo_id
        self.what = what

    def __str__(self) -> str:
        return str(self.args[0])
