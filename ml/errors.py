"""Exceptions that a step raises, and the exit codes they map to; each message says what to do next.

Exit codes of ``python -m ml`` (defined in :mod:`ml.contract`; the operator maps them to task outcomes):

====  =====================================================================================
0     success, or nothing to do (the JSON line then holds ``skip``)
1     the step failed for a reason a person must act on (bad data, a missing input, a bug)
2     usage error: the arguments were refused; retrying the same command cannot help
75    a service (MLflow, S3, the database) could not be reached: nothing was decided, retry later
====  =====================================================================================
"""

from __future__ import annotations

from ml.contract import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE"]


class CtError(Exception):
    """Base class: a failure a person can act on."""

    exit_code = EXIT_FAILED


class UsageError(CtError):
    """The command line was refused (a bad id, a missing flag)."""

    exit_code = EXIT_USAGE


class ConfigError(CtError):
    """The configuration file or an environment override is invalid."""

    exit_code = EXIT_USAGE


class NothingToDo(CtError):
    """The step has no work for this run; the operator maps it to a skip."""

    exit_code = EXIT_OK


class BatchNotFound(CtError):
    """A batch id names no committed landing batch."""


class UnsafePath(CtError):
    """A path inside a batch resolves outside the batch root."""


class ChampionUnavailable(CtError):
    """The champion alias points at a version that is missing or cannot be loaded."""


class ChampionChanged(CtError):
    """The champion moved while a gate was evaluating (``current`` is where it points now)."""

    def __init__(self, message: str, current: str | None = None) -> None:
        super().__init__(message)
        self.current = current


class StorageError(CtError):
    """The lake could not be read or written (a missing object, a refused write)."""


class CorruptState(StorageError):
    """A state or report object exists but cannot be parsed; the message names the object."""


class LeaseLost(CtError):
    """This process no longer holds the promotion lease (it expired or was taken over): it must not act."""


class InfrastructureUnavailable(CtError):
    """MLflow, S3 or the database did not answer. Nothing was decided; the task fails and retries."""

    exit_code = EXIT_UNAVAILABLE
