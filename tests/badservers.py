"""Misbehaving endpoints on loopback: one that accepts and never answers, one that answers garbage."""

from __future__ import annotations

import socket
import threading


class BadServer:
    """mode 'hang': accept, read, say nothing. mode 'garbage': answer bytes that are not HTTP."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections: list[socket.socket] = []
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            while not self._stop:
                data = conn.recv(65536)
                if not data:
                    return
                if self.mode == "garbage":
                    conn.sendall(b"\x00\xffNOT HTTP AT ALL\r\n\r\n<<<>>>" * 10)
                    conn.close()
                    return
        except OSError:
            return

    def stop(self) -> None:
        self._stop = True
        self.sock.close()
        for conn in self.connections:
            try:
                conn.close()
            except OSError:
                pass
