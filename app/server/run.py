"""Running the API server with uvicorn, in the foreground (CLI) or on a background thread (GUI, tests)."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any

from app.core.runtime.protocol import ChatEngine
from app.server.api import create_app
from app.server.guards import LOOPBACK_NAMES
from app.server.service import ServedModel


@dataclass
class RunningServer:
    """A server on a background thread; ``url`` is where it listens."""

    server: Any
    thread: threading.Thread
    service: ServedModel
    url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for a server started as another process)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


SHUTDOWN_GRACE_S = 3  # on SIGTERM/SIGINT or stop(): in-flight replies get this long, then are cut off


def _server(
    engine: ChatEngine, model_id: str, host: str, port: int, api_key: str | None, **app_options: Any
) -> tuple[Any, ServedModel]:
    import uvicorn

    service = ServedModel(engine, model_id)
    # a server bound to this machine answers its names only (DNS rebinding); one bound elsewhere, any name
    app_options.setdefault("allowed_hosts", LOOPBACK_NAMES if host in LOOPBACK_NAMES else None)
    app = create_app(service, api_key=api_key, **app_options)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    return uvicorn.Server(config), service


def serve_forever(
    engine: ChatEngine,
    model_id: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    **app_options: Any,
) -> None:
    """Serve until interrupted (Ctrl-C, SIGTERM): in-flight replies are closed within a few seconds."""
    server, _ = _server(engine, model_id, host, port, api_key, **app_options)
    server.run()


def start_in_background(
    engine: ChatEngine,
    model_id: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    timeout: float = 30.0,
    **app_options: Any,
) -> RunningServer:
    """Start serving on a thread and return once it accepts connections (port 0 picks a free port)."""
    server, service = _server(engine, model_id, host, port, api_key, **app_options)
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    deadline = threading.Event()
    for _ in range(int(timeout * 20)):
        if server.started:
            break
        deadline.wait(0.05)  # uvicorn offers no "started" callback; this only waits for its own flag
    if not server.started:
        server.should_exit = True
        raise RuntimeError("The API server did not start.")
    sockets = server.servers[0].sockets
    bound_port = sockets[0].getsockname()[1]
    return RunningServer(server, thread, service, f"http://{host}:{bound_port}")
