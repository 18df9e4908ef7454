"""The one error type of the converters: every message names the file, network or torch key."""


class ConversionError(ValueError):
    """A checkpoint that cannot be converted (unreadable, refused, missing network, bad key/shape).
    Bytes of non-UTF-8 file names show as \\xNN in the message (as in data.common.printable)."""

    def __init__(self, message: str):
        super().__init__(message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
