"""Owner tokens of the SQLite store: which process runs a saga, and is it alive.

A token is ``"<host>/<pid>/<start>"`` where ``start`` is the process start time
(from ``/proc/<pid>/stat`` on Linux, so a reused pid is not mistaken for the
owner). A saga is orphaned when its owner runs on this host and that process is
gone. Owners on another host are never considered dead: a SQLite file is shared
by the processes of one machine only.
"""

from __future__ import annotations

import os
import socket


def _start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot, or ``None`` if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def current_owner() -> str:
    """The token of this process."""
    pid = os.getpid()
    return f"{socket.gethostname()}/{pid}/{_start_time(pid) or '?'}"


def owner_alive(token: str | None) -> bool:
    """Whether the process named by ``token`` may still be running."""
    if not token:
        return False
    host, _, rest = token.partition("/")
    pid_text, _, start = rest.partition("/")
    if host != socket.gethostname():
        return True
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return start == (_start_time(pid) or "?")
    if not _alive(pid):
        return False
    actual = _start_time(pid)
    if actual is None or start == "?":
        return True
    return actual == start


__all__ = ["current_owner", "owner_alive"]
