"""A TCP proxy in front of the test PostgreSQL server, to cut a store off from it.

The server is shared: a test may not restart it, nor refuse other sessions. A store
connected through a :class:`Proxy` sees what a restart or a network outage does to
it alone: ``cut()`` drops its connections and, until ``restore()``, treats new ones
as ``mode`` says: ``"reset"`` accepts and closes them at once (a server still starting
up), ``"refused"`` stops listening (nothing on the port: connection refused),
``"blackholed"`` accepts them and never answers (a host gone from the network).
``silence()`` keeps its connections open but stops forwarding anything on them, and holds
new ones unanswered: a network partition that resets nothing, where a statement waits
for the kernel to give up (some 15 minutes), and so does psycopg's request to cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit


class Proxy:
    """Forwards connections to ``dsn``'s host and port, from a thread of its own."""

    def __init__(self, dsn: str) -> None:
        parts = urlsplit(dsn)
        self._dsn = parts
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.refusing = False
        self.mode = "reset"
        self.refused = 0  # connections refused (reset or held unanswered) while cut off
        self.silent = False  # by silence(): nothing is forwarded, no connection dropped
        self._held: set[asyncio.StreamWriter] = set()  # blackholed connections
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="pg-proxy")
        self._thread.start()
        self._ready.wait()

    def dsn(self, **query: str) -> str:
        """``dsn`` with the proxy's address (and ``query`` added to its parameters)."""
        netloc = self._dsn.netloc.rsplit("@", 1)
        userinfo = netloc[0] + "@" if len(netloc) == 2 else ""
        extra = "&".join(f"{k}={v}" for k, v in query.items())
        params = "&".join(p for p in (self._dsn.query, extra) if p)
        return urlunsplit(
            (self._dsn.scheme, f"{userinfo}127.0.0.1:{self.port}", self._dsn.path, params, "")
        )

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> asyncio.Server:
            return await asyncio.start_server(self._handle, sock=self._sock)

        self._server = self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            if self.mode == "blackholed":
                self._held.add(writer)  # never answered; dropped at restore()
            else:
                writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    if self.silent:
                        continue  # lost on the way
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)

    def _call(self, action: object) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                action()  # type: ignore[operator]
            finally:
                # Once the sockets it aborted are closed (asyncio closes them soon after).
                self._loop.call_soon(self._loop.call_soon, done.set)

        self._loop.call_soon_threadsafe(run)
        done.wait()

    def cut(self, mode: str = "reset") -> None:
        """Drop every connection through the proxy and, until :meth:`restore`, reset
        new ones (``"reset"``), refuse them (``"refused"``: the port is closed) or hold
        them unanswered (``"blackholed"``)."""
        assert mode in ("reset", "refused", "blackholed"), mode

        def drop() -> None:
            self.refusing = True
            self.mode = mode
            if mode == "refused":
                self._server.close()  # the listening socket: connections are refused
            for writer, up_writer in list(self._pairs):
                writer.transport.abort()
                up_writer.transport.abort()

        self._call(drop)

    def silence(self) -> None:
        """Until :meth:`restore`, forward nothing on the open connections (without closing
        them) and hold new ones unanswered."""

        def quiet() -> None:
            self.silent = True
            self.refusing = True
            self.mode = "blackholed"

        self._call(quiet)

    def restore(self) -> None:
        """Accept and forward connections again (on the same port)."""

        async def accept() -> None:
            if self.mode == "refused":
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", self.port))
                sock.listen(64)
                self._server = await asyncio.start_server(self._handle, sock=sock)
            for writer in list(self._held):
                writer.transport.abort()
            self._held.clear()
            self.silent = False
            self.refusing = False
            self.mode = "reset"

        asyncio.run_coroutine_threadsafe(accept(), self._loop).result(timeout=10)

    def close(self) -> None:
        self.restore()
        self.cut()

        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@contextlib.contextmanager
def proxied(dsn: str) -> Iterator[Proxy]:
    proxy = Proxy(dsn)
    try:
        yield proxy
    finally:
        proxy.close()
