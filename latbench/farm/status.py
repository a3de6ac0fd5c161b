"""What the farm looks like now: its units, their hosts, busy or free, and the collections
running on it with what they have left (read from Ray's cluster state and the queue actors)."""

from __future__ import annotations

from latbench.farm import NAMESPACE
from latbench.farm.cluster import node_units
from latbench.farm.queue import PREFIX


def farm_status(ray) -> dict:
    """``{"units": [...], "collections": [...]}`` of the cluster this process is connected to.

    A unit is ``free`` when its resource is available and ``busy`` while a collection holds it
    (``measuring``: the items of the batch it runs now). A stopped agent's units leave the list
    (Ray keeps no resources for a dead node); a collection lists the units it lost.
    """
    collections = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry.get("namespace") != NAMESPACE or not entry.get("name", "").startswith(PREFIX):
            continue
        try:
            snapshot = ray.get(ray.get_actor(entry["name"], namespace=NAMESPACE).snapshot.remote(), timeout=10)
        except Exception:  # the collection just ended
            continue
        collections.append(snapshot | {"name": entry["name"]})
    running = {unit: (c["device"], items) for c in collections for unit, items in (c.get("running") or {}).items()}
    available = ray.available_resources()
    units = []
    for nu in node_units(ray.nodes()):
        if not nu.alive:
            continue
        state = "free" if available.get(nu.unit.resource, 0) >= 1 else "busy"
        units.append({"unit": nu.unit.name, "device": nu.unit.device, "host": nu.unit.host,
                      "hostname": nu.hostname, "node_ip": nu.ip, "node_id": nu.node_id, "state": state,
                      "measuring": running.get(nu.unit.name, (None, None))[1] if state == "busy" else None})
    return {"units": units, "collections": sorted(collections, key=lambda c: c.get("started_at", 0))}
