"""Head side of a farm collection: plan and export here, measure each batch on a free unit of
the device's pool through Ray, store every result here.

Each unit gets one Ray actor (a `UnitWorker`) that needs the unit's custom resource, so it runs
on the host that owns the device and no other collection can use the unit meanwhile. Batches
go, one at a time per unit, to whichever unit is free, so a pool of several phones of one model
shares the work; the store's `unit` column records which one measured what. Ray restarts a
crashed worker and retries its batch; a unit whose node has left the cluster is given up after
`lost_after_s`, and whatever the store still lacks is planned again for the units left (the
store's resume logic): nothing is lost, and the store's unique key keeps anything from being
stored twice.

Why not `ray.util.ActorPool`: it does not say which actor a failed call ran on, and it hands a
dead actor further work; this loop needs both to give up a lost unit.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latbench.collect import Collector, EventCallback, Plan, Report, _disk_full, plan_batches
from latbench.errors import LatbenchError
from latbench.farm import NAMESPACE
from latbench.farm.cluster import connected, node_units, one_line
from latbench.farm.queue import CollectionQueue, queue_name
from latbench.farm.units import unit_of_resource
from latbench.farm.worker import UnitWorker, stop_batch
from latbench.profiles import DeviceProfile, settings_differences
from latbench.runners.base import BatchOutput, make_runner
from latbench.store import Store

#: re-planning rounds after units were lost, before the rest is reported as not measured
MAX_PASSES = 5


@dataclass
class FarmReport(Report):
    units: dict[str, dict] = field(default_factory=dict)  # unit -> host, batches, measured, lost
    skipped: dict[str, str] = field(default_factory=dict)  # unit -> why it was not used
    passes: int = 0  # 1, plus one per re-planning of what lost units left unmeasured
    # Per key of the plan that 2+ units measured: (max - min) / pooled median of the units'
    # medians. An op's rounds are split over the units, so its round spread mixes "the phone
    # drifted" with "the phones differ"; this is the second part alone.
    unit_gaps: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        gaps = self.unit_gaps
        return super().to_dict() | {
            "units": self.units, "skipped_units": self.skipped, "passes": self.passes,
            "keys_on_several_units": len(gaps), "median_unit_gap": float(np.median(gaps)) if gaps else None,
            "max_unit_gap": max(gaps) if gaps else None}


@dataclass
class Claimed:
    """A unit this collection holds: its actor and what it said about itself."""

    unit: str
    actor: object
    hostname: str
    node_ip: str
    transport: str
    runtime_label: str
    runner_info: dict
    pid: int  # of its worker process now (Ray may restart it)
    node_id: str = ""
    lost: str | None = None


@dataclass
class _Batch:
    pairs: list[tuple[str, int]]
    attempt: int = 1
    not_before: float = 0.0
    struck: tuple[str, int] | None = None  # the pair its last attempt's runner died at (set_aside)
    failed_on: frozenset[str] = frozenset()  # units an attempt of it failed on: another unit tries first


class FarmCollector(Collector):
    """A Collector whose batches run on the farm's units of `profile.name` instead of one
    device connected here. Use as a context manager: entering connects to the farm and claims
    the free units of the pool."""

    def __init__(self, profile: DeviceProfile, store: Store, *, address: str | None,
                 rounds: int | None = None, cache_dir: Path | None = None,
                 on_event: EventCallback | None = None, lost_after_s: float = 30.0,
                 poll_s: float = 1.0, claim_timeout_s: float = 120.0, busy_wait_s: float = 5.0,
                 max_restarts: int = 3, stop_wait_s: float = 20.0):
        super().__init__(profile, store, rounds=rounds, cache_dir=cache_dir, on_event=on_event)
        self.address = address
        self.lost_after_s = lost_after_s
        self.poll_s = poll_s
        self.claim_timeout_s = claim_timeout_s
        self.busy_wait_s = busy_wait_s
        self.max_restarts = max_restarts
        self.stop_wait_s = stop_wait_s  # on Ctrl-C: how long the units' batches in flight are waited for
        self.units: dict[str, Claimed] = {}
        self.skipped: dict[str, str] = {}
        self._stack = contextlib.ExitStack()
        self._ray = None
        self._absent: dict[str, float] = {}
        self._models: dict[str, tuple[str, str, object]] = {}
        self._queue = None
        self._report: FarmReport | None = None
        self._total = 0
        self._rounds_of: Counter = Counter()
        self._failing: Counter = Counter()  # unit -> its attempts in a row that measured nothing

    # ---- claiming and releasing units ------------------------------------------------------

    def __enter__(self) -> "FarmCollector":
        try:
            self._ray = self._stack.enter_context(connected(self.address))
            self._stack.callback(self._release)
            self._stop_on_sigterm(over_ray=True)  # as Ctrl-C: stop the units' batches, keep what finished
            # never connected here: the head only reads runtime versions from the units' info
            self.runner = make_runner(self.transport, self.profile)
            self._claim()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _offered_twice(self) -> dict[str, list[str]]:
        """Units of this device that more than one live node offers -> those nodes' hosts."""
        hosts: dict[str, list[str]] = {}
        for node in self._ray.nodes():
            if not node.get("Alive"):
                continue
            for resource in node.get("Resources") or {}:
                unit = unit_of_resource(resource)
                if unit is not None and unit.device == self.profile.name:
                    hosts.setdefault(unit.name, []).append(node.get("NodeManagerHostname") or
                                                           node.get("NodeManagerAddress", "?"))
        return {u: h for u, h in hosts.items() if len(h) > 1}

    def _pool(self) -> list:
        return [nu for nu in node_units(self._ray.nodes()) if nu.alive and nu.unit.device == self.profile.name]

    def _claim(self) -> None:
        from latbench.export import exporter_tag

        ray = self._ray
        pool = self._pool()
        if not pool:
            raise LatbenchError(
                f"no unit of device {self.profile.name} is on the farm",
                f"start an agent on the host it hangs off, `latbench farm agent --address HEAD:6379 "
                f"--unit {self.profile.name}@HOST`; `latbench farm status` lists the units")
        free = self._free_units(pool)
        twice = self._offered_twice()
        for nu in pool:
            if nu.unit.name in twice:  # two agents for one phone: two collections could share it
                free.discard(nu.unit.name)
                self.skipped[nu.unit.name] = (f"offered by {len(twice[nu.unit.name])} live nodes "
                                              f"({', '.join(twice[nu.unit.name])}): stop all but one agent")
            elif nu.unit.name not in free:
                self.skipped[nu.unit.name] = "busy: another collection holds it"
        if not free:
            why = "; ".join(f"{u}: {w}" for u, w in sorted(self.skipped.items()))
            if all(w.startswith("busy") for w in self.skipped.values()):
                raise LatbenchError(f"every unit of {self.profile.name} is busy ({why})",
                                    "wait for the other collection to finish (see `latbench farm status`)")
            raise LatbenchError(f"no unit of {self.profile.name} can measure now ({why})",
                                "see `latbench farm status`")
        exporter = exporter_tag(self.profile.format)
        here = self.profile.settings(exporter)
        worker = ray.remote(UnitWorker)
        actors = {}
        for nu in pool:
            if nu.unit.name in free:
                actors[nu.unit.name] = worker.options(
                    num_cpus=0, resources={nu.unit.resource: 1}, max_restarts=self.max_restarts,
                    max_task_retries=self.max_restarts).remote(
                    nu.unit.name, trust_new_host=getattr(self.transport, "trust_new_host", False))
        asked = {actor.describe.remote(exporter): unit for unit, actor in actors.items()}
        ready, pending = ray.wait(list(asked), num_returns=len(asked), timeout=self.claim_timeout_s)
        for ref in pending:
            self.skipped[asked[ref]] = f"its worker did not start within {self.claim_timeout_s:g} s"
        mismatched = []
        for ref in ready:
            unit = asked[ref]
            try:
                facts = ray.get(ref)
            except ray.exceptions.RayError as exc:
                self.skipped[unit] = f"its worker failed: {one_line(exc)}"
                continue
            if facts["error"]:
                self.skipped[unit] = facts["error"]
                continue
            if facts["settings_hash"] != DeviceProfile.settings_hash(here):
                mismatched.append((unit, facts))
                continue
            self.units[unit] = Claimed(unit, actors[unit], facts["hostname"], facts["node_ip"],
                                       facts["transport"], facts["runtime_label"], facts["runner_info"],
                                       facts["pid"], facts["node_id"])
        for unit, actor in actors.items():
            if unit not in self.units:
                _kill(ray, actor)
        if mismatched:
            unit, facts = mismatched[0]
            diff = "; ".join(settings_differences(here, facts["settings"])[:4])
            raise LatbenchError(
                f"unit {unit} on {facts['hostname']} measures {self.profile.name} with other settings than "
                f"this head ({diff}); its numbers would not be comparable",
                f"make {facts['profile']} on {facts['hostname']} match {self.profile.source}, or the "
                f"reverse; agents read their profile again at each collection")
        if not self.units:
            why = "; ".join(f"{u}: {w}" for u, w in sorted(self.skipped.items()))
            raise LatbenchError(f"no unit of {self.profile.name} can measure now ({why})",
                                "fix the device on its host (`latbench doctor --device NAME` there)")
        labels = {c.runtime_label for c in self.units.values()}
        if len(labels) > 1:
            found = ", ".join(f"{c.unit}: {c.runtime_label}" for c in self.units.values())
            raise LatbenchError(f"the units of {self.profile.name} run different runtime versions ({found})",
                                "install the same runtime version on every unit of a pool")

    def _free_units(self, pool: list) -> set[str]:
        """Units whose resource is free; one just released can take a moment to show free."""
        deadline = time.monotonic() + self.busy_wait_s
        while True:
            available = self._ray.available_resources()
            free = {nu.unit.name for nu in pool if available.get(nu.unit.resource, 0) >= 1}
            if len(free) == len(pool) or time.monotonic() >= deadline:
                return free
            time.sleep(0.2)

    def _release(self) -> None:
        """Give the units back at once (the actors would die with this driver anyway)."""
        for claimed in self.units.values():
            _kill(self._ray, claimed.actor)
        if self._queue is not None:
            _kill(self._ray, self._queue)
            self._queue = None

    def units_line(self) -> str:
        """One line for the human: which units measure, and which were left out and why."""
        parts = [f"{c.unit} ({c.hostname} {c.node_ip}, {c.transport})" for c in self.units.values()]
        line = f"farm: {len(parts)} unit(s) of {self.profile.name}: {', '.join(parts)}"
        if self.skipped:
            line += "; not used: " + "; ".join(f"{u}: {w}" for u, w in sorted(self.skipped.items()))
        return line

    # ---- planning and running ----------------------------------------------------------------

    def plan(self, items, runner_info: dict | None = None) -> Plan:
        first = next(iter(self.units.values()))
        return super().plan(items, runner_info=runner_info if runner_info is not None else first.runner_info)

    def run(self, plan: Plan) -> FarmReport:
        start = time.perf_counter()
        report = FarmReport(planned=len(plan.todo), already=plan.already, skipped=dict(self.skipped))
        self._report = report
        for c in self.units.values():
            report.units[c.unit] = {"hostname": c.hostname, "node_ip": c.node_ip, "batches": 0,
                                    "measured": 0, "lost": None, "worker_pids": [c.pid]}
        self._forget_set_aside(plan)
        self._failing.clear()
        paths = self.export_all(plan)
        self.report_export_failures(plan, paths, report)
        wanted = [pair for pair in plan.todo if pair[0] in paths]
        self._rounds_of = Counter(k for k, _ in wanted)
        self._total = len(wanted)
        batches = [b for b in ([p for p in batch if p[0] in paths] for batch in plan.batches) if b]
        self._open_queue(plan)
        for passes in range(1, MAX_PASSES + 1):
            if not batches:
                break
            report.passes = passes
            measured, lost = report.measured, sum(1 for c in self.units.values() if c.lost)
            self._run_pass(plan, batches, paths, report)
            done = self.store.measured(plan.context)
            missing = [p for p in wanted if p not in done and p[0] not in report.failed]
            if not missing:
                break
            progressed = report.measured > measured or sum(1 for c in self.units.values() if c.lost) > lost
            if not self._live() or not progressed or passes == MAX_PASSES:
                lost = "; ".join(f"{u}: {c.lost}" for u, c in sorted(self.units.items()) if c.lost)
                why = (f"no unit of {self.profile.name} left on the farm ({lost})" if not self._live()
                       else f"still not measured after {passes} pass(es) over the farm")
                for key, _ in missing:
                    report.failed.setdefault(key, f"run: {why}")
                break
            batches = plan_batches(missing, self.profile.protocol.batch_size, self.profile.protocol.seed)
        report.unmeasured = self.count_unmeasured(plan, paths)
        report.round_spreads = self.round_spreads(plan)
        report.unit_gaps = self.unit_gaps(plan)
        report.wall_s = time.perf_counter() - start
        self._publish(deque(), {}, report)
        return report

    def unit_gaps(self, plan: Plan) -> list[float]:
        """How far apart the units' medians of each key of the plan are, where 2+ units
        measured it (this run or an earlier one): (max - min) / the pooled median."""
        pooled = {row["key"]: row["median_ms"] for row in self.store.table(plan.context)}
        by_key: dict[str, list[float]] = {}
        for unit in self.store.units(plan.context):
            if unit:
                for row in self.store.table(plan.context, unit=unit):
                    by_key.setdefault(row["key"], []).append(row["median_ms"])
        return [(max(m) - min(m)) / pooled[key] for key, m in sorted(by_key.items())
                if key in plan.items and len(m) > 1 and pooled.get(key, 0) > 0]

    def _live(self) -> list[str]:
        return [u for u, c in self.units.items() if c.lost is None]

    def _run_pass(self, plan: Plan, batches: list[list[tuple[str, int]]], paths: dict[str, Path],
                  report: FarmReport) -> None:
        """Hand the batches to free units one at a time per unit until all are stored or given up."""
        queue = deque(_Batch(list(b)) for b in batches)
        inflight: dict[object, tuple[str, _Batch, dict]] = {}
        try:
            self._hand_out(plan, queue, inflight, paths, report)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM here: the units' batches too
            self._stop_inflight(plan, inflight, report, exc)
            raise

    def _hand_out(self, plan: Plan, queue: deque, inflight: dict, paths: dict[str, Path],
                  report: FarmReport) -> None:
        ray = self._ray  # `inflight` stays the caller's: a Ctrl-C here stops what it holds
        last_watch = time.monotonic()
        while queue or inflight:
            now = time.monotonic()
            busy = {unit for unit, _, _ in inflight.values()}
            for unit in self._live():
                if unit in busy or unit in self._absent:
                    continue
                batch = _pop_ready(queue, now, unit, self._live())
                if batch is None:
                    continue  # what is ready failed on this unit: another unit tries it first
                batch.pairs = [p for p in batch.pairs if p[0] not in self._given_up]  # set aside meanwhile
                if not batch.pairs:
                    continue
                ids = {str(i): pair for i, pair in enumerate(batch.pairs)}
                items, models = [], {}
                for bid, (key, _) in ids.items():
                    name, sha, ref = self._model(paths[key])
                    items.append((bid, name, sha))
                    models[name] = ref
                with _stop_held():  # a batch sent is a batch in `inflight`, so a stop reaches it
                    inflight[self.units[unit].actor.run_batch.remote(items, models)] = (unit, batch, ids)
            self._publish(queue, inflight, report)
            if not self._live():
                return  # the rest is re-planned (and reported) by run()
            if time.monotonic() - last_watch >= self.poll_s:
                self._watch(inflight)
                last_watch = time.monotonic()
            if not inflight:
                wake = min((b.not_before for b in queue), default=now)
                time.sleep(min(max(wake - time.monotonic(), 0.05), self.poll_s))
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=self.poll_s)
            for ref in ready:
                if ref in inflight:
                    with _stop_held():  # a batch out of `inflight` is a batch stored
                        unit, batch, ids = inflight.pop(ref)
                        self._finish(plan, ref, unit, batch, ids, queue, report)

    def _finish(self, plan: Plan, ref, unit: str, batch: _Batch, ids: dict, queue: deque,
                report: FarmReport) -> None:
        """Store one batch's result; queue what is left for another attempt or give it up."""
        ray = self._ray
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self._lose(unit, f"its worker died: {one_line(exc)}")
            return  # nothing came back: its pairs are planned again from the store
        except ray.exceptions.RayError as exc:
            result = {"started": time.time(), "temperature_c": None,
                      "output": {"start": None, "error": f"the unit's worker failed: {one_line(exc)}"}}
        output = BatchOutput(**result["output"])
        temp = result["temperature_c"]
        self.units[unit].pid = result.get("pid", self.units[unit].pid)
        for run in result.get("ended_runs", ()):  # left timing by a worker killed outright
            report.units[unit].setdefault("ended_runs", []).append(run)
            self.on_event("ended", 0, 0, {"run": run, "unit": unit})
        if temp is not None:
            report.max_temperature_c = max(temp, report.max_temperature_c or temp)
        before = report.measured
        remaining = self.store_output(plan, ids, output, result["started"], temp, report, unit=unit)
        report.units[unit]["batches"] += 1
        if self.units[unit].pid not in report.units[unit]["worker_pids"]:  # Ray restarted it
            report.units[unit]["worker_pids"].append(self.units[unit].pid)
        report.units[unit]["measured"] += report.measured - before
        retry = self.profile.retry
        attempts = int(retry.get("attempts", 3))
        remaining, struck = self.set_aside(plan, remaining, output, report, batch.struck)
        self._judge_unit(unit, measured=report.measured > before, failed=bool(remaining), error=output.error)
        if not remaining:  # all measured, or what was left was set aside
            report.batches_ok += 1
        elif batch.attempt < attempts:
            delay = min(float(retry.get("backoff_s", 2.0)) * 2 ** (batch.attempt - 1),
                        float(retry.get("max_backoff_s", 60.0)))
            self.on_event("retry", batch.attempt, attempts, {"error": output.error, "delay_s": delay, "unit": unit})
            queue.append(_Batch(remaining, batch.attempt + 1, time.monotonic() + delay, struck,
                                batch.failed_on | {unit}))
        else:
            report.batches_failed += 1
            for key, _ in remaining:
                report.failed.setdefault(key, f"run: {output.error}")
        settled = report.measured + sum(self._rounds_of[k] for k in report.failed if k in self._rounds_of)
        self.on_event("measure", min(settled, self._total), self._total, {"report": report, "unit": unit})

    def _judge_unit(self, unit: str, *, measured: bool, failed: bool, error: str | None) -> None:
        """Give up a unit whose device fails whatever it is given, as a single-device collect
        stops: after `retry.max_failed_batches` attempts in a row that measured nothing, or at
        once when its disk is full. Its batches go to the units left; with none left, the run
        ends instead of trying every batch `attempts` times on a phone that is unplugged."""
        if measured or not failed:
            self._failing[unit] = 0
            return
        self._failing[unit] += 1
        give_up = int(self.profile.retry.get("max_failed_batches", 3))
        if _disk_full(error):
            self._lose(unit, f"its device's disk is full ({error}); free space in its work directory, "
                             f"then re-run")
        elif self._failing[unit] >= give_up:
            self._lose(unit, f"{self._failing[unit]} batches in a row failed on it, so its device looks "
                             f"unreachable or misconfigured (last: {error})")

    def _stop_inflight(self, plan: Plan, inflight: dict, report: FarmReport, stop: KeyboardInterrupt) -> None:
        """Have each unit stop the batch it measures and store the models that batch finished, as
        a single-device collection keeps them when stopped. Waits `stop_wait_s` at most; a second
        Ctrl-C leaves them. The stop goes to the node that offers the unit now (an agent that
        rejoined is a new node) and to the worker's pid there (`worker_pid_file`: Ray may have
        restarted it). A unit not reached (its node gone) has its batch measured again by the
        next run."""
        if not inflight:
            return
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self._ray
        deadline = time.monotonic() + self.stop_wait_s
        # Ray's wait raises a KeyboardInterrupt of its own for the handler's: ask the handler
        by = "SIGTERM" if stop.args[:1] == ("SIGTERM",) or self.sigterm_received else "Ctrl-C"
        stopper = ray.remote(num_cpus=0, max_retries=0)(stop_batch)
        try:  # where each unit is now: an agent that rejoined is a new node
            nodes = {nu.unit.name: nu.node_id for nu in node_units(ray.nodes()) if nu.alive}
        except Exception:
            nodes = {}
        asked = {}
        for unit in {unit for unit, _, _ in inflight.values()}:
            claimed = self.units[unit]
            node = nodes.get(unit) or claimed.node_id
            if node and unit not in self._absent:
                asked[stopper.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node, soft=False)).remote(unit, claimed.pid, by)] = unit
        if asked:
            self.on_event("stopping", 0, len(asked), {"wait_s": self.stop_wait_s, "by": by})
        answered, _ = ray.wait(list(asked), num_returns=len(asked), timeout=self.stop_wait_s) if asked else ([], [])
        reached = {asked[ref] for ref in answered if _value(ray, ref)}
        stopping = [ref for ref, (unit, _, _) in inflight.items() if unit in reached]
        if stopping:
            ray.wait(stopping, num_returns=len(stopping), timeout=max(deadline - time.monotonic(), 0.0))
        ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0)  # stopped or finished
        for ref in ready:
            unit, _, ids = inflight.pop(ref)
            result = _value(ray, ref)
            if result is None:
                continue
            self.store_output(plan, ids, BatchOutput(**result["output"]), result["started"],
                              result["temperature_c"], report, unit=unit)

    def _watch(self, inflight: dict) -> None:
        """Give up units whose node has been gone from the cluster for `lost_after_s`; until
        then Ray may still bring their worker back (an agent that restarted) and retry."""
        present = {nu.unit.name for nu in node_units(self._ray.nodes()) if nu.alive}
        now = time.monotonic()
        for unit in self._live():
            if unit in present:
                self._absent.pop(unit, None)
                continue
            since = self._absent.setdefault(unit, now)
            if now - since >= self.lost_after_s:
                for ref in [r for r, (u, _, _) in inflight.items() if u == unit]:
                    del inflight[ref]  # its pairs are planned again from the store
                self._lose(unit, f"its node left the farm (gone for {self.lost_after_s:g} s)")

    def _lose(self, unit: str, why: str) -> None:
        claimed = self.units[unit]
        if claimed.lost is None:
            claimed.lost = why
            _kill(self._ray, claimed.actor)
        if self._report is not None:
            self._report.units[unit]["lost"] = claimed.lost

    def _model(self, path: Path) -> tuple[str, str, object]:
        """(file name the agents cache it under, sha256, Ray ref of the bytes): put once per file."""
        key = str(path)
        if key not in self._models:
            data = path.read_bytes()
            self._models[key] = (f"{path.parent.name}/{path.name}", hashlib.sha256(data).hexdigest(),
                                 self._ray.put(data))
        return self._models[key]

    # ---- what `farm status` sees -----------------------------------------------------------

    def _open_queue(self, plan: Plan) -> None:
        ray = self._ray
        options = {"name": queue_name(self.profile.name), "namespace": NAMESPACE, "num_cpus": 0,
                   "max_restarts": 0}
        try:  # on this driver's node (a soft affinity may land on an agent host that then leaves)
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node = ray.get_runtime_context().get_node_id()
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        except Exception:
            pass
        try:
            self._queue = ray.remote(CollectionQueue).options(**options).remote(
                {"device": self.profile.name, "settings_hash": plan.context.settings_hash,
                 "head": socket.gethostname(), "started_at": time.time(), "units": sorted(self.units)})
        except Exception:  # status is a convenience; never fail a collection for it
            self._queue = None

    def _publish(self, queue: deque, inflight: dict, report: FarmReport) -> None:
        if self._queue is None:
            return
        try:
            self._queue.update.remote({
                "queued_batches": len(queue), "queued_items": sum(len(b.pairs) for b in queue),
                "running": {unit: len(ids) for unit, _, ids in inflight.values()},
                "measured": report.measured, "total": self._total,
                "units": self._live(), "lost": {u: c.lost for u, c in self.units.items() if c.lost},
                "updated_at": time.time()})
        except Exception:
            pass


def _pop_ready(queue: deque, now: float, unit: str, live: list[str]) -> _Batch | None:
    """The first queued batch for `unit` not waiting for its retry backoff: one that failed on
    `unit` only when every live unit has failed it."""
    for i, batch in enumerate(queue):
        if batch.not_before <= now and (unit not in batch.failed_on or set(live) <= batch.failed_on):
            del queue[i]
            return batch
    return None


@contextlib.contextmanager
def _stop_held():
    """Ctrl-C and the SIGTERM handler wait until the block is over: its bookkeeping is not cut
    halfway (a batch sent but not recorded as in flight, or taken out but not stored)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    handlers = {sig: h for sig, h in handlers.items() if callable(h)}  # not SIG_DFL, SIG_IGN
    for sig in handlers:
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if caught:
            handlers[caught[0]](caught[0], None)  # raises KeyboardInterrupt, now


def _value(ray, ref):
    """A finished task's result; None if it failed."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError:
        return None


def _kill(ray, actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:
        pass
