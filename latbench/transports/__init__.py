"""Transports: how latbench reaches a device (connect, push, shell, pull, info)."""

from __future__ import annotations

from latbench.profiles import DeviceProfile
from latbench.transports.base import CommandResult, Transport


def open_transport(profile: DeviceProfile) -> Transport:
    """The transport a profile names, not yet connected."""
    if profile.transport == "local":
        from latbench.transports.local import LocalTransport

        return LocalTransport(profile)
    if profile.transport == "ssh":
        from latbench.transports.ssh import SSHTransport

        return SSHTransport(profile)
    if profile.transport == "adb":
        from latbench.transports.adb import ADBTransport

        return ADBTransport(profile)
    raise AssertionError(profile.transport)  # profiles are validated on load


__all__ = ["CommandResult", "Transport", "open_transport"]
