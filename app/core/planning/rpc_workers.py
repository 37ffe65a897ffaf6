"""llama.cpp RPC workers as offload devices: parsing their addresses and asking one, over its own wire protocol,
which devices it has and how much memory each has free — without llama.cpp, whose RPC client ends the whole
process when a worker does not answer.

A worker serves one client at a time: while a loaded model holds its connection a new probe waits, so every
probe has a timeout and says "busy" rather than hanging.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import asdict, dataclass
from typing import Any

from app.core.errors import DeskError

DEFAULT_PORT = 50052
PROTOCOL_MAJOR = 7  # llama.cpp's RPC_PROTO_MAJOR_VERSION of the bundled llama.cpp
PROTOCOL_MINOR = 0
_CMD_GET_DEVICE_MEMORY = 11
_CMD_HELLO = 14
_CMD_DEVICE_COUNT = 15
_CONN_CAPS = 24  # bytes of transport capabilities in the hello messages; zeros ask for plain TCP


class RpcWorkerError(DeskError):
    """A worker address that cannot be used, with the reason in words."""


@dataclass(frozen=True)
class RpcDevice:
    """One device of a worker as llama.cpp will see it (``RPC<n>`` once added)."""

    endpoint: str
    index: int
    free_bytes: int
    total_bytes: int

    @property
    def label(self) -> str:
        return self.endpoint if self.index == 0 else f"{self.endpoint} #{self.index}"


@dataclass(frozen=True)
class RpcWorker:
    """A worker that answered: its address, protocol version and devices."""

    endpoint: str
    version: str
    devices: tuple[RpcDevice, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` (or ``host``, port 50052; ``[::1]:port`` for IPv6) as (host, port).

    Raises:
        RpcWorkerError: empty, a bad port, or spaces.
    """
    value = text.strip()
    if not value or any(ch.isspace() for ch in value):
        raise RpcWorkerError(f"{text!r} is not a worker address; write host:port, e.g. 192.168.1.20:50052.")
    host, port_text = value, str(DEFAULT_PORT)
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest.removeprefix(":") or port_text
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RpcWorkerError(f"{text!r} is not a worker address; write host:port with a port from 1 to 65535.")
    return host, int(port_text)


def normalise_endpoint(text: str) -> str:
    """The canonical ``host:port`` spelling llama.cpp is given."""
    host, port = parse_endpoint(text)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoints(text: str) -> tuple[str, ...]:
    """A comma-separated list of worker addresses, normalised, each once, in the order given."""
    seen: list[str] = []
    for part in text.split(","):
        if part.strip():
            endpoint = normalise_endpoint(part)
            if endpoint not in seen:
                seen.append(endpoint)
    return tuple(seen)


def _receive(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return bytes(data)


def _call(sock: socket.socket, command: int, payload: bytes, reply_size: int) -> bytes:
    sock.sendall(struct.pack("<BQ", command, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _receive(sock, 8))
    if size != reply_size:
        raise ConnectionError(f"unexpected reply of {size} bytes")
    return _receive(sock, size)


def probe_worker(endpoint: str, *, timeout: float = 3.0) -> RpcWorker:
    """Connect to a worker, check its protocol version and read its devices' memory.

    Raises:
        RpcWorkerError: not reachable, busy with another client, or another protocol version — each said so.
    """
    address = normalise_endpoint(endpoint)
    host, port = parse_endpoint(address)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        raise RpcWorkerError(
            f"No RPC worker answers at {address} ({err.strerror or err}). Start one there with "
            "`mixtral-desk rpc-worker` (or llama.cpp's rpc-server) and check the address and firewall."
        ) from err
    try:
        with sock:
            hello = _call(sock, _CMD_HELLO, bytes(_CONN_CAPS), 4 + _CONN_CAPS)
            major, minor, patch = hello[0], hello[1], hello[2]
            version = f"{major}.{minor}.{patch}"
            if major != PROTOCOL_MAJOR or minor > PROTOCOL_MINOR:
                raise RpcWorkerError(
                    f"The RPC worker at {address} speaks protocol {version}; this llama.cpp speaks "
                    f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}. Run the same llama.cpp version on both machines."
                )
            (count,) = struct.unpack("<I", _call(sock, _CMD_DEVICE_COUNT, b"", 4))
            devices = []
            for index in range(count):
                free, total = struct.unpack("<QQ", _call(sock, _CMD_GET_DEVICE_MEMORY, struct.pack("<I", index), 16))
                devices.append(RpcDevice(address, index, free, total))
    except TimeoutError as err:
        raise RpcWorkerError(
            f"The RPC worker at {address} accepted the connection but did not answer within {timeout:.0f} s: it "
            "serves one client at a time, so another program (or a model loaded elsewhere) may be using it."
        ) from err
    except (OSError, ConnectionError, struct.error) as err:
        raise RpcWorkerError(
            f"Something at {address} answered, but not as a llama.cpp RPC worker ({err}). Check the port."
        ) from err
    if not devices:
        raise RpcWorkerError(f"The RPC worker at {address} offers no devices.")
    worker = RpcWorker(address, version, tuple(devices))
    _last_answers[address] = worker
    return worker


_last_answers: dict[str, RpcWorker] = {}


def last_answer(endpoint: str) -> RpcWorker | None:
    """What the worker at ``endpoint`` last answered in this process (before a model loaded here took its one
    connection, say); None if it was never asked."""
    return _last_answers.get(normalise_endpoint(endpoint))
