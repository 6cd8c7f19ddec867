"""Errors raised by the training core. Each carries the offending value in its message."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. The message names the file, line or field at fault."""


class ConfigError(ValueError):
    """A hyper-parameter or option that cannot be used (unknown method, dim <= 0, ...)."""


class FingerprintMismatchError(ValueError):
    """A model is used with a dataset other than the one it was trained on."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class JobCancelled(Exception):
    """Raised between epochs when the caller's cancellation check says stop."""
