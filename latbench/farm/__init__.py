"""A device farm on Ray: agents on the hosts that devices hang off, collection planned on a head.

Each device attached to an agent's host is a *unit* (``pixel3@desk-a``), advertised to the
Ray cluster as a custom resource of the agent's node, so Ray places each unit's worker on the
host that owns the device and never lets two collections share it. Needs the ``farm`` extra
(Ray); nothing here imports Ray until a farm is used.
"""

from __future__ import annotations

from latbench.errors import LatbenchError

#: Ray namespace of the farm's named actors (the queues `farm status` reads).
NAMESPACE = "latbench-farm"
INSTALL_HINT = "pip install 'latbench[farm]' on every host of the farm, with the same Ray version everywhere"


def require_ray():
    """The `ray` module, or a one-line error naming the extra."""
    try:
        import ray
    except ImportError:
        raise LatbenchError("the device farm needs Ray, which is not installed", INSTALL_HINT) from None
    return ray
