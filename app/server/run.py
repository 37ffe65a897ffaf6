"""Running the API server with uvicorn, in the foreground (CLI) or on a background thread (GUI, tests)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from app.core.engine import Engine
from app.server.api import create_app
from app.server.service import EngineService


@dataclass
class RunningServer:
    """A server on a background thread; ``url`` is where it listens."""

    server: Any
    thread: threading.Thread
    service: EngineService
    url: str

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.service.close()


def _server(
    engine: Engine, model_id: str, host: str, port: int, api_key: str | None, parallel: int = 1, **app_options: Any
) -> tuple[Any, EngineService]:
    import uvicorn

    service = EngineService(engine, model_id, parallel)
    app = create_app(service, api_key=api_key, **app_options)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    return uvicorn.Server(config), service


def serve_forever(
    engine: Engine,
    model_id: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    parallel: int = 1,
) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server, service = _server(engine, model_id, host, port, api_key, parallel)
    try:
        server.run()
    finally:
        service.close()


def start_in_background(
    engine: Engine,
    model_id: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    timeout: float = 30.0,
    parallel: int = 1,
    **app_options: Any,
) -> RunningServer:
    """Start serving on a thread and return once it accepts connections (port 0 picks a free port)."""
    server, service = _server(engine, model_id, host, port, api_key, parallel, **app_options)
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    deadline = threading.Event()
    for _ in range(int(timeout * 20)):
        if server.started:
            break
        deadline.wait(0.05)  # uvicorn offers no "started" callback; this only waits for its own flag
    if not server.started:
        server.should_exit = True
        service.close()
        raise RuntimeError("The API server did not start.")
    sockets = server.servers[0].sockets
    bound_port = sockets[0].getsockname()[1]
    return RunningServer(server, thread, service, f"http://{host}:{bound_port}")
