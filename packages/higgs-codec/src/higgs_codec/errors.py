"""The exceptions a user of the codec can cause."""


class CodecError(ValueError):
    """Bad audio, bad codes or a checkpoint that cannot be used."""


class CodecFileNotFoundError(CodecError, FileNotFoundError):
    """A file or directory the codec was pointed at does not exist."""
