"""Run an ASGI app with uvicorn in a background thread on loopback (demo, tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BackgroundServer:
    """``with BackgroundServer(app) as server: httpx.get(server.url + "/health")``."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int | None = None, health_path: str = "/health"):
        import uvicorn

        # Bind now and hand the socket to uvicorn, so no other process can take the port in between.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit TCP_NODELAY (uvicorn sets it only on sockets it creates): without it,
        # Nagle's algorithm and delayed ACKs add ~40 ms to every request after the first on a connection
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind((host, port or 0))
        self.host = host
        self.port = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.health_path = health_path
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name=f"uvicorn:{self.port}", daemon=True
        )

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + self.health_path, timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if not self._thread.is_alive():
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server on {self.url} did not become healthy within {timeout_s} s")

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
