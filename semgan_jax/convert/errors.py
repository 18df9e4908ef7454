"""The one error type of the converters: every message names the file, network or torch key."""


class ConversionError(ValueError):
    """A checkpoint that cannot be converted (unreadable, refused, missing network, bad key/shape)."""
