"""Tell "a service did not answer" apart from every other failure.

An unreachable MLflow, S3 or database is never an answer: it must not read as "no champion" or
"no data". :func:`outage` walks an exception's cause chain and returns an
:class:`~ml.errors.InfrastructureUnavailable` when the root of it is a connection failure, a
timeout or a 5xx from a service, so that callers (and the CLI, as a last resort) can fail with the
retryable exit code instead of recording a decision.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from ml.errors import InfrastructureUnavailable

# (module, class name) pairs, checked by name so that nothing heavy is imported to classify an error.
_CONNECTION_ERRORS = {
    ("requests.exceptions", "ConnectionError"),
    ("requests.exceptions", "ConnectTimeout"),
    ("requests.exceptions", "ReadTimeout"),
    ("requests.exceptions", "Timeout"),
    ("requests.exceptions", "RetryError"),
    ("urllib3.exceptions", "MaxRetryError"),
    ("urllib3.exceptions", "NewConnectionError"),
    ("urllib3.exceptions", "ProtocolError"),
    ("botocore.exceptions", "EndpointConnectionError"),
    ("botocore.exceptions", "ConnectionClosedError"),
    ("botocore.exceptions", "ReadTimeoutError"),
    ("botocore.exceptions", "ConnectTimeoutError"),
    ("sqlalchemy.exc", "OperationalError"),
    ("sqlalchemy.exc", "InterfaceError"),
    ("sqlalchemy.exc", "DisconnectionError"),
    ("psycopg2", "OperationalError"),
}
_UNAVAILABLE_STATUS = frozenset({502, 503, 504})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | TimeoutError):  # the builtins: refused, reset, timed out
        return True
    return any(
        (cls.__module__, cls.__name__) in _CONNECTION_ERRORS
        or (cls.__module__.startswith("psycopg2.errors") and cls.__name__ in ("AdminShutdown", "CannotConnectNow"))
        for cls in type(exc).__mro__
    )


def _mlflow_unavailable(exc: BaseException) -> bool:
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    if mlflow_exceptions is None or not isinstance(exc, mlflow_exceptions.MlflowException):
        return False
    try:
        status = int(exc.get_http_status_code())
    except (TypeError, ValueError):
        return False
    message = str(exc)
    return status in _UNAVAILABLE_STATUS or ("API request to" in message and "failed with exception" in message)


def outage(exc: BaseException, service: str = "") -> InfrastructureUnavailable | None:
    """The retryable error that ``exc`` really is, or None when it is not an outage."""
    for link in _chain(exc):
        if isinstance(link, InfrastructureUnavailable):
            return link
        if _is_connection_error(link) or _mlflow_unavailable(link):
            what = f"{service} " if service else ""
            first_line = (str(link).strip().splitlines() or [type(link).__name__])[0][:300]
            error = InfrastructureUnavailable(
                f"{what}did not answer ({type(link).__name__}: {first_line}); nothing was decided, retry later"
            )
            error.__cause__ = exc
            return error
    return None
