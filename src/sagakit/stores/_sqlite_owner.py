"""Owner tokens of the SQLite store: which process runs a saga, and is it alive.

A token is ``"<host>/<pid>/<start>/<pid namespace>"``: ``start`` is the process start
time (from ``/proc/<pid>/stat`` on Linux, so a reused pid is not mistaken for the
owner) and the PID namespace tells containers sharing a hostname apart. A saga is
orphaned when its owner runs on this host, in this PID namespace, and that process
is gone (or a zombie nobody reaped). Owners elsewhere — another host, another
container — are never considered dead: their pids mean nothing here, so such a saga
is handed over with ``sagakit release``. Tokens written before the namespace was
recorded (three parts) are read as before.
"""

from __future__ import annotations

import os
import socket


def _stat(pid: int) -> tuple[str, str] | None:
    """The state letter and start time (clock ticks since boot) of ``pid``, if known."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    if len(fields) <= 19:
        return None
    return fields[0].decode(), fields[19].decode()


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "?"


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
    stat = _stat(pid)
    return f"{socket.gethostname()}/{pid}/{stat[1] if stat else '?'}/{_pid_namespace()}"


def owner_alive(token: str | None) -> bool:
    """Whether the process named by ``token`` may still be running."""
    if not token:
        return False
    if owner_elsewhere(token):  # its pid means nothing here: it may run
        return True
    _, pid_text, start, _ = _parts(token)
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        stat = _stat(pid)
        return start == (stat[1] if stat else "?")
    if not _alive(pid):
        return False
    stat = _stat(pid)
    if stat is None:
        return True
    state, actual = stat
    if state in ("Z", "X"):  # killed, not yet reaped by its parent: dead all the same
        return False
    return start == "?" or actual == start


def _parts(token: str) -> list[str]:
    """A token's host, pid, start time and PID namespace ("" for those it lacks)."""
    return [*token.split("/", 3), "", "", ""][:4]


def owner_elsewhere(token: str | None) -> bool:
    """Whether ``token`` names a process of another host or container (PID namespace):
    one this host never considers dead, so recovery here never takes its sagas."""
    if not token:
        return False
    host, _, _, namespace = _parts(token)
    return host != socket.gethostname() or bool(namespace and namespace != _pid_namespace())


def owner_running_here(token: str | None) -> bool:
    """Whether ``token`` names another process of this host and PID namespace that runs."""
    if not token or owner_elsewhere(token):
        return False
    return _parts(token)[1] != str(os.getpid()) and owner_alive(token)


__all__ = ["current_owner", "owner_alive", "owner_elsewhere", "owner_running_here"]
