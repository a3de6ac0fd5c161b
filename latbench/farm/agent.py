"""The per-host agent: check the devices attached to this host, then run this host as a Ray
node that offers one custom resource per unit (``device:pixel3@desk-a: 1``).

The node is Ray's own (`ray start --block`, with this interpreter); the agent only adds the
resources and the registry that tells the unit workers Ray starts here which profile file on
this host serves each unit.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from latbench.errors import LatbenchError, UsageError
from latbench.farm import require_ray
from latbench.farm.cluster import DEFAULT_PORT, normalize_address
from latbench.farm.units import Unit, parse_unit, registry_env
from latbench.profiles import DeviceProfile, load_profile


@dataclass(frozen=True)
class AgentUnit:
    unit: Unit
    profile: DeviceProfile  # read on this host: its connection reaches this host's device


def resolve_units(texts: list[str], host: str | None = None) -> list[AgentUnit]:
    """The units named on the command line, each with its profile as found on this host.

    Two units of one device would both read the same profile, so the same connection: one
    phone offered twice, the other never used. Each phone needs an agent of its own."""
    found: dict[str, AgentUnit] = {}
    by_device: dict[str, Unit] = {}
    for text in texts:
        unit = parse_unit(text, host)
        if unit.name in found:
            raise UsageError(f"unit {unit} is named twice", "give each --unit once")
        if unit.device in by_device:
            first = by_device[unit.device]
            raise UsageError(
                f"units {first} and {unit} would both reach the one device of "
                f"{load_profile(unit.device).source} (one profile, one connection)",
                f"start one agent per {unit.device}, each in a directory whose "
                f"device_profiles/{unit.device}.yaml reaches its own device: "
                f"`latbench farm agent --address HEAD:6379 --unit {unit}` from the second one")
        by_device[unit.device] = unit
        found[unit.name] = AgentUnit(unit, load_profile(unit.device))
    return list(found.values())


def check_unit(agent_unit: AgentUnit, trust_new_host: bool = False) -> str:
    """Reach the unit's device and its runtime now, so a broken one is fixed before the farm
    counts on it; returns the runtime label ("onnxruntime 1.20.1"). `trust_new_host` remembers
    an SSH board's key seen for the first time, as `collect --trust-new-host` does."""
    from latbench.runners.base import make_runner
    from latbench.transports import open_transport

    transport = open_transport(agent_unit.profile)
    if trust_new_host:  # never turns off a profile's trust_unknown_host
        transport.trust_new_host = True
    try:
        with transport:
            runner = make_runner(transport, agent_unit.profile)
            return runner.runtime_version(runner.info())
    except LatbenchError as exc:
        raise type(exc)(f"unit {agent_unit.unit}: {exc.message}", exc.hint) from None


def ray_start_argv(units: list[AgentUnit], *, address: str | None, head: bool = False,
                   port: int = DEFAULT_PORT, num_cpus: int = 0, object_store_mb: int | None = None,
                   node_ip: str | None = None) -> list[str]:
    """`ray start` for this host's node, run by this interpreter (Ray and latbench must match
    the head's). num_cpus defaults to 0 so that no other Ray work lands on a measuring host."""
    argv = [sys.executable, "-m", "ray.scripts.scripts", "start"]
    if head:
        argv += ["--head", "--port", str(port)]
    else:
        if not address:
            raise UsageError("an agent needs the head's address", "give --address HEAD:6379, or --head on the head")
        if address.startswith("ray://"):
            raise UsageError(f"an agent joins with the head's GCS address, not {address}",
                             "give --address HEAD:6379 (ray:// is for `collect --farm` and `farm status`)")
        argv += ["--address", normalize_address(address)]
    argv += ["--resources", json.dumps({au.unit.resource: 1 for au in units}, sort_keys=True),
             "--num-cpus", str(num_cpus), "--disable-usage-stats", "--block"]
    if object_store_mb:
        argv += ["--object-store-memory", str(object_store_mb * 2**20)]
    if node_ip:
        argv += ["--node-ip-address", node_ip]
    return argv


def agent_env(units: list[AgentUnit]) -> dict[str, str]:
    """This process's environment plus the unit registry, for the node and the workers it starts."""
    return dict(os.environ) | registry_env({au.unit: au.profile.source for au in units})


def exec_node(argv: list[str], env: dict[str, str]) -> None:
    """Become the Ray node (so a signal to the agent stops the node and its workers)."""
    require_ray()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
