"""trialflow served for real: uvicorn in a thread, on a free port of 127.0.0.1.

For tests that need real HTTP and real concurrency (the TestClient runs one request at a time
through one event loop, so it cannot show a race between requests).

    with LiveServer(create_app(runtime)) as server:
        httpx.post(server.url + "/api/signups", json={...})
"""
from __future__ import annotations

import socket
import threading
import time

import uvicorn

START_TIMEOUT_SECONDS = 10.0


class LiveServer:
    def __init__(self, app, host: str = "127.0.0.1", limit_concurrency: int | None = None, port: int = 0):
        """``port``: 0 for any free one; a fixed one when the URL must be known before the app is
        made (a sign-in redirect URI registered with a provider)."""
        self.app = app
        self.host = host
        self.wanted_port = port
        self.limit_concurrency = limit_concurrency
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> LiveServer:
        # The socket is bound here and handed to uvicorn, so no other process can take the
        # port between choosing it and serving on it.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.wanted_port))
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on",
                                limit_concurrency=self.limit_concurrency, backlog=512)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"uvicorn:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn exited before it started serving")
            if time.monotonic() > deadline:
                self._stop()
                raise RuntimeError(f"uvicorn did not start within {START_TIMEOUT_SECONDS}s")
            time.sleep(0.01)  # waiting for readiness, not for time to pass
        return self

    def _stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=START_TIMEOUT_SECONDS)
            if self._thread.is_alive():
                raise RuntimeError("uvicorn did not stop")
        if self._socket is not None:
            self._socket.close()

    def __exit__(self, *exc) -> None:
        self._stop()
