"""Where the ``sagakit`` command's run ends besides its result: its output failing (a full
disk, a closed pipe), and SIGTERM, which cancels it as Ctrl-C does."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TextIO


class _OutputFailed(Exception):
    """Writing the command's output failed (a full disk, ``> /dev/full``, an I/O error):
    its ``__cause__`` is the ``OSError``. Told apart from an error of the log."""


class _Output:
    """The output stream ``out`` of a command: an ``OSError`` writing or flushing it
    becomes :class:`_OutputFailed` (a ``BrokenPipeError`` stays one: its reader went
    away, which ends the command quietly). Anything else is ``out``'s own."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def write(self, text: str) -> int:
        try:
            return self._out.write(text)
        except BrokenPipeError:
            raise
        except OSError as error:
            raise _OutputFailed from error

    def flush(self) -> None:
        try:
            self._out.flush()
        except BrokenPipeError:
            raise
        except OSError as error:
            raise _OutputFailed from error

    def __getattr__(self, name: str) -> Any:  # isatty(), fileno(), ...
        return getattr(self._out, name)


def _stop_writing_stdout() -> None:
    """Standard output onto ``/dev/null``: what it still buffers is flushed there at exit,
    not again where it failed (Python's "Exception ignored" complaint)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class _Terminated(BaseException):
    """SIGTERM stopped the command (``timeout``, systemd, Kubernetes): as Ctrl-C's
    ``KeyboardInterrupt``, after the cancelled command released what it held."""


async def _stoppable(command: Callable[[], Awaitable[int]]) -> int:
    """``command()`` (the command run, its exit status), cancelled by SIGTERM as
    ``asyncio.run`` cancels it on Ctrl-C.

    Killed by SIGTERM's default action, ``recover`` left the saga it was resuming
    leased on PostgreSQL until the lease ran out, and its claims unreturned. Cancelled,
    the command ends as on Ctrl-C: a claim not run is given back, the store closes
    (giving up its leases), then :class:`_Terminated`. A second SIGTERM kills at once,
    as without this handler. A handler of the embedding program (or SIGTERM ignored,
    as ``nohup``-style launchers may leave it) is left alone.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    heard = False

    def terminate() -> None:
        nonlocal heard
        heard = True
        loop.remove_signal_handler(signal.SIGTERM)  # the next one: the default, death
        task.cancel()

    handled = False
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        try:
            loop.add_signal_handler(signal.SIGTERM, terminate)
            handled = True
        except (NotImplementedError, RuntimeError, ValueError):  # Windows' loops
            pass
    try:
        return await command()
    except asyncio.CancelledError:
        if heard and task.uncancel() == 0:
            raise _Terminated from None
        raise
    finally:
        if handled and not heard:
            loop.remove_signal_handler(signal.SIGTERM)
