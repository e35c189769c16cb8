"""Who holds something, and whether that holder is provably dead: host, pid and the pid's start time.

The lease and the training runs record :func:`identity`; a later process asks :func:`dead_here`
before taking over. Only a holder on this host can be proven dead (its pid is gone, or now belongs
to a process that started later); a holder elsewhere is judged by its lease expiry instead.
"""

from __future__ import annotations

import os
import socket


def _start_time(pid: int) -> str | None:
    """The pid's start time in clock ticks since boot (Linux), to tell a reused pid from the holder."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def identity() -> dict[str, str]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": str(pid), "pid_start": _start_time(pid) or ""}


def dead_here(host: str | None, pid: str | int | None, pid_start: str | None) -> bool:
    """True only when the holder ran on this host and its process no longer exists."""
    if host != socket.gethostname() or not str(pid or "").isdigit() or int(pid or 0) <= 0:
        return False
    try:
        os.kill(int(pid or 0), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by someone else
    started = _start_time(int(pid or 0))
    return bool(pid_start) and started is not None and started != pid_start
