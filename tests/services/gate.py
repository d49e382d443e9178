"""Gate: a loopback TCP forwarder to a server, that can be shut to make the server look down."""

from __future__ import annotations

import contextlib
import socket
import threading

HOST = "127.0.0.1"


class Gate:
    """A loopback TCP forwarder to a server that can be shut: while shut, every connection is
    closed at once (clients see the server as down, kept-alive connections included); while
    open, bytes flow both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._open = False
        self._live: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server((HOST, 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def set_open(self, value: bool) -> None:
        with self._lock:
            self._open = value
            if not value:
                for sock in self._live:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                self._live.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if not self._open:
                    client.close()
                    continue
                upstream = socket.create_connection((HOST, self.target_port))
                self._live += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            source.close()  # each socket is the source of one pump: closed once

    def close(self) -> None:
        self.set_open(False)
        self._listener.close()
