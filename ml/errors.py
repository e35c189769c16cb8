"""Exceptions that a step raises; each message says what to do next."""

from __future__ import annotations


class CtError(Exception):
    """Base class: a failure a person can act on."""


class ConfigError(CtError):
    """The configuration file or an environment override is invalid."""


class NothingToDo(CtError):
    """The step has no work for this run; the operator maps it to a skip."""


class BatchNotFound(CtError):
    """A batch id names no committed landing batch."""


class UnsafePath(CtError):
    """A path inside a batch resolves outside the batch root."""


class ChampionUnavailable(CtError):
    """The champion alias points at a version that is missing or cannot be loaded."""


class ChampionChanged(CtError):
    """The champion moved while a gate was evaluating; the evaluation is stale."""


class StorageError(CtError):
    """The lake could not be read or written."""
