"""Measure found networks on a device through latbench, to check what the predictor promised."""

from __future__ import annotations

from typing import Sequence

from latbench.errors import DeviceError
from latbench.ops import Network


def measure_networks(networks: Sequence[Network], device: str, *, rounds: int | None = None,
                     on_event=None, lock_wait_s: float = 0.0) -> dict[str, dict]:
    """network key -> {"median_ms", "p10_ms", "p90_ms", "rounds", "runtime"} measured on `device`.

    Goes through the same Collector as `latbench collect`, into the same store, so a
    network measured once is not measured again, and the measurement stays for later fits.
    """
    from latbench import home
    from latbench.collect import Collector
    from latbench.profiles import load_profile
    from latbench.store import Store

    profile = load_profile(device)
    home.writable_home()
    with Store(home.db_path()) as store, Collector(profile, store, rounds=rounds, on_event=on_event,
                                                    lock_wait_s=lock_wait_s) as col:
        plan = col.plan(list(networks))
        report = col.run(plan)
        table = {row["key"]: row for row in store.table(plan.context)}
    out = {}
    for net in networks:
        row = table.get(net.key)
        if row is None:
            why = report.failed.get(net.key, "no measurement was stored")
            raise DeviceError(f"could not measure {net.key} on {device}: {why}",
                              f"check the device with `latbench collect --device {device} --limit 1`")
        out[net.key] = {"median_ms": row["median_ms"], "p10_ms": row["p10_ms"], "p90_ms": row["p90_ms"],
                        "rounds": row["rounds"], "runtime": plan.runtime_label,
                        "table": plan.context.table_id}
    return out
