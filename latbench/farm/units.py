"""Units: one device attached to one host, named ``DEVICE@HOST`` and advertised as a Ray
custom resource ``device:DEVICE@HOST`` of that host's node.

The agent tells the Ray workers it starts which profile file serves each of its units through
one environment variable (the registry), so a unit's profile is always read on its own host:
the same device name may point at a different phone on every host.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass

from latbench.errors import UsageError

RESOURCE_PREFIX = "device:"
#: environment variable of an agent's Ray node: JSON {unit: profile file on that host}
REGISTRY_ENV = "LATBENCH_FARM_UNITS"
_DEVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Unit:
    device: str  # the device profile's name (the same on every host of a pool)
    host: str  # a label for where it hangs off (default: the agent's host name)

    @property
    def name(self) -> str:
        return f"{self.device}@{self.host}"

    @property
    def resource(self) -> str:
        """The Ray custom resource that stands for this unit (1 per unit)."""
        return RESOURCE_PREFIX + self.name

    def __str__(self) -> str:
        return self.name


def default_host() -> str:
    """This host's short name, usable in a unit name."""
    short = socket.gethostname().split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", short).strip("-.")
    return cleaned or "host"


def parse_unit(text: str, host: str | None = None) -> Unit:
    """``DEVICE@HOST`` or ``DEVICE`` (then HOST is `host`, else this host's name)."""
    device, sep, label = text.partition("@")
    if not sep:
        label = host or default_host()
    if not _DEVICE.fullmatch(device) or not _HOST.fullmatch(label):
        raise UsageError(f"bad unit name {text!r}",
                         "write DEVICE@HOST, e.g. pixel3@desk-a (letters, digits, '.', '_', '-'), "
                         "where DEVICE is a device profile on that host")
    return Unit(device, label)


def unit_of_resource(resource: str) -> Unit | None:
    """The unit a Ray resource name stands for; None for other resources."""
    name = resource[len(RESOURCE_PREFIX):]
    if not resource.startswith(RESOURCE_PREFIX) or "@" not in name:
        return None
    try:
        return parse_unit(name)
    except UsageError:
        return None


def registry_env(profiles: dict[Unit, str]) -> dict[str, str]:
    """Environment for an agent's Ray node: which profile file serves each unit."""
    return {REGISTRY_ENV: json.dumps({u.name: str(p) for u, p in profiles.items()}, sort_keys=True)}


def registered_profile(unit: str) -> str | None:
    """The profile file that serves `unit` on this host, as its agent registered it."""
    try:
        registry = json.loads(os.environ.get(REGISTRY_ENV) or "{}")
    except json.JSONDecodeError:
        return None
    return registry.get(unit) if isinstance(registry, dict) else None
