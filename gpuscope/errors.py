"""Errors gpuscope raises on bad input: each says what is wrong in words a person acts on."""


class GpuscopeError(Exception):
    """Base of every error the CLI reports as a one-line message (exit status 2)."""


class RingError(GpuscopeError):
    """A ring file cannot be trusted."""


class NotARingError(RingError):
    """The file is not a gpuscope ring (wrong magic, or too short to hold a header)."""


class RingVersionError(RingError):
    """The ring was written by another ABI version of the hooks."""


class CorruptRingError(RingError):
    """The header holds impossible sizes or offsets, or the file is truncated."""


class NativeBuildError(GpuscopeError):
    """Compiling gpuscope's native code failed."""


class ModelError(GpuscopeError):
    """A model could not be provided."""


class ModelFetchError(ModelError):
    """The model's packages could not be fetched from the package registry."""


class ModelVerificationError(ModelError):
    """An assembled model does not have the expected size or sha256."""


class ModelShapeError(ModelError):
    """A synthetic model shape is unknown, malformed or impossible."""


class QuantizeError(ModelError):
    """llama-quantize is missing or failed."""
