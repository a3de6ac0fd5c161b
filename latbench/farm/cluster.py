"""Reaching the Ray cluster of a farm and reading which units its live nodes offer."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

from latbench.errors import LatbenchError
from latbench.farm import NAMESPACE, require_ray
from latbench.farm.units import Unit, unit_of_resource

DEFAULT_PORT = 6379
CLIENT_PORT = 10001  # Ray Client (ray://)
CLIENT_INIT_ATTEMPTS = 3
CLIENT_RETRY_PAUSE_S = 2.0
#: What the head's Ray Client proxy says when the server process of a session did not start:
#: its own two messages, or any error raised while it started that process (a traceback
#: through its start_specific_server, e.g. psutil.ZombieProcess of the process that died).
SESSION_START_FAILED = ("Starting Ray client server failed", "Proxy failed to Connect to backend",
                        "in start_specific_server")


def normalize_address(address: str | None) -> str | None:
    """``ray://HEAD[:PORT]`` (Ray Client, port 10001 by default) and ``HEAD:PORT`` pass as
    they are; a bare ``HEAD`` gets Ray's default port; None or ``auto`` means the cluster
    started on this host (or RAY_ADDRESS)."""
    if address is None or address == "auto":
        return address
    scheme = "ray://" if address.startswith("ray://") else ""
    rest = address.removeprefix(scheme)
    host, sep, port = rest.rpartition(":")
    if sep and port.isdigit() and host and not host.endswith(":"):
        return address
    return f"{scheme}{rest}:{CLIENT_PORT if scheme else DEFAULT_PORT}"


def probe(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear line when nothing listens at `address` (Ray itself would keep
    retrying for minutes)."""
    if not address or address == "auto":
        return
    host, _, port = normalize_address(address).removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise LatbenchError(f"nothing answers at {address} ({exc.strerror or exc})",
                            "check the head's address and port (HEAD:6379 for its GCS, ray://HEAD:10001 for "
                            "Ray Client) and that it runs: `latbench farm agent --head --unit ...` there") from None


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[object]:
    """This process connected to the farm at `address` as a Ray driver (reusing a connection
    that is already open, which it then leaves open)."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    target = normalize_address(address)
    probe(target if target not in (None, "auto") else os.environ.get("RAY_ADDRESS"))
    where = target or "this host (RAY_ADDRESS or a local `ray start --head`)"
    for attempt in range(1, CLIENT_INIT_ATTEMPTS + 1):
        try:
            ray.init(address=target or "auto", namespace=NAMESPACE, logging_level=logging.WARNING,
                     log_to_driver=False)
            break
        except ConnectionAbortedError as exc:
            # Ray Client: the head's proxy forks a server process for each client while its
            # own gRPC threads run; on a busy host that child can die at once (gRPC "Check
            # failed: next_worker->state == KICKED" in the head's ray_client_server.err), and
            # the next one usually lives. The head is up: ask again. Other refusals (a version
            # or runtime_env mismatch) would only repeat.
            if not any(sign in str(exc) for sign in SESSION_START_FAILED):
                _cannot_reach(where, exc)
            if attempt == CLIENT_INIT_ATTEMPTS:
                raise LatbenchError(
                    f"the Ray head at {where} answered but could not start a client session "
                    f"({CLIENT_INIT_ATTEMPTS} tries): {one_line(exc)}",
                    "see ray_client_server*.err in the head's Ray logs (/tmp/ray/session_latest/logs "
                    "by default); a head busy starting up may need a minute") from None
            print(f"latbench: the Ray head at {where} could not start a client session "
                  f"({one_line(exc)}); retrying ({attempt + 1}/{CLIENT_INIT_ATTEMPTS})",
                  file=sys.stderr, flush=True)
            ray.shutdown()
            time.sleep(CLIENT_RETRY_PAUSE_S)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            _cannot_reach(where, exc)
    try:
        yield ray
    finally:
        ray.shutdown()


def one_line(exc: BaseException) -> str:
    """An error as one line: its first line, and where that only introduces a traceback (Ray
    Client's "Initialization failure from server:"), the traceback's last line too."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = f"{lines[0]} {lines[-1]}" if len(lines) > 1 and lines[0].endswith(":") else lines[0]
    if len(text) <= 300:
        return text
    cut = text.rfind(". ", 0, 300)  # whole sentences, not a word cut in two
    return text[:cut + 1] if cut > 100 else text[:297] + "..."


def _cannot_reach(where: str, exc: BaseException) -> NoReturn:
    raise LatbenchError(f"cannot reach the Ray head of the farm at {where}: {one_line(exc)}",
                        "check the address (HEAD:6379 or ray://HEAD:10001) and that the head runs: "
                        "`latbench farm agent --head` or `ray start --head` on it") from None


@dataclass(frozen=True)
class NodeUnit:
    unit: Unit
    node_id: str
    ip: str
    hostname: str
    alive: bool


def node_units(nodes: list[dict]) -> list[NodeUnit]:
    """Every unit the nodes of `ray.nodes()` offer, a unit on a live node winning over the same
    unit on a dead one (an agent that restarted)."""
    found: dict[str, NodeUnit] = {}
    for node in nodes:
        for resource in node.get("Resources") or {}:
            unit = unit_of_resource(resource)
            if unit is None:
                continue
            entry = NodeUnit(unit, node["NodeID"], node.get("NodeManagerAddress", ""),
                             node.get("NodeManagerHostname", ""), bool(node.get("Alive")))
            if unit.name not in found or (entry.alive and not found[unit.name].alive):
                found[unit.name] = entry
    return sorted(found.values(), key=lambda e: e.unit.name)
