"""The device farm on a real multi-node Ray cluster on this host, built with Ray's own cluster
test utilities: a head and two agent nodes, each offering one unit of the same device (one
unit local, one over SSH to a real sshd). Collections split over the pool, survive a node
killed midway with nothing lost or stored twice, refuse a unit with other settings; and
`farm agent`, `farm status` and `collect --farm` run as real commands."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the device farm needs Ray: pip install -e .[farm]")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from conftest import FAST_PROFILE_NAME as DEVICE, running, signal_when, wait_for, write_profile  # noqa: E402

from latbench import home  # noqa: E402
from latbench.errors import LatbenchError, UsageError  # noqa: E402
from latbench.farm.cluster import normalize_address  # noqa: E402
from latbench.farm.dispatch import FarmCollector  # noqa: E402
from latbench.farm.status import farm_status  # noqa: E402
from latbench.farm.units import Unit, parse_unit, registry_env, unit_of_resource  # noqa: E402
from latbench.profiles import load_profile  # noqa: E402
from latbench.spaces import get_space  # noqa: E402
from latbench.store import Store  # noqa: E402

pytest_plugins = ["sshd"]

MB = 2**20
NODE = {"num_cpus": 1, "object_store_memory": 80 * MB}  # 2 cores here: keep every node small
OPS = get_space("fbnet-cifar").ops()


@dataclass
class Farm:
    cluster: object
    local: Unit  # unit on agent node A: this host's CPU
    ssh: Unit  # unit on agent node B: the sshd on 127.0.0.1
    homes: dict  # unit name -> LATBENCH_HOME of its agent
    ssh_workdir: Path
    client_port: int

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_agent(self, unit: Unit, agent_home: Path, profile: Path):
        """A node the way `latbench farm agent` makes one: the unit resource and the registry.
        Each node stands for another host, so it has its own hardware locks too."""
        return self.cluster.add_node(**NODE, resources={unit.resource: 1},
                                     env_vars=registry_env({unit: str(profile)}) | {
                                         "LATBENCH_HOME": str(agent_home),
                                         "LATBENCH_LOCK_DIR": str(agent_home / "locks")})


@pytest.fixture(scope="module")
def farm(tmp_path_factory, sshd):
    from ray.cluster_utils import Cluster
    from sshd import free_port

    root = tmp_path_factory.mktemp("farm")
    local, ssh = Unit(DEVICE, "agent-a"), Unit(DEVICE, "agent-b")
    homes = {u.name: root / u.host for u in (local, ssh)}
    known_hosts = root / "known_hosts"
    known_hosts.write_text(sshd.host_key_line())
    workdir = root / "ssh-board"
    profiles = {
        local: write_profile(homes[local.name], DEVICE),
        ssh: write_profile(homes[ssh.name], DEVICE, transport="ssh", python=sys.executable, connection={
            "host": sshd.host, "port": sshd.port, "user": sshd.user, "key_file": str(sshd.user_key),
            "known_hosts": str(known_hosts), "connect_timeout_s": 5, "workdir": str(workdir)}),
    }
    client_port = free_port()
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        NODE, include_dashboard=False, ray_client_server_port=client_port,
        env_vars={"LATBENCH_HOME": str(root / "head-node")}))
    farm = Farm(cluster, local, ssh, homes, workdir, client_port)
    for unit, profile in profiles.items():
        farm.add_agent(unit, homes[unit.name], profile)
    ray.init(address=cluster.address, log_to_driver=False)  # this test process is the head's driver
    yield farm
    ray.shutdown()
    cluster.shutdown()


def start_agent_node(farm: Farm, unit: Unit, agent_home: Path, profile: Path) -> subprocess.Popen:
    """`farm.add_agent` as a separate `ray start` process (Ray's cluster utilities start nodes
    only from the main thread); the caller terminates it."""
    from latbench.farm.agent import AgentUnit, ray_start_argv

    argv = ray_start_argv([AgentUnit(unit, None)], address=farm.address, num_cpus=NODE["num_cpus"],
                          object_store_mb=NODE["object_store_memory"] // MB)
    env = os.environ | registry_env({unit: str(profile)}) | {
        "LATBENCH_HOME": str(agent_home), "LATBENCH_LOCK_DIR": str(agent_home / "locks")}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: unit.name in unit_states(), 60, f"{unit} to rejoin")
    return process


def unit_states() -> dict[str, str]:
    return {u["unit"]: u["state"] for u in farm_status(ray)["units"]}


def collect_on_farm(keys: int, on_event=None, device: str = DEVICE, **options):
    """Collect the first `keys` ops of fbnet-cifar with the head's profile over the farm. A unit
    the last test's collection still holds may take a loaded host a while to show free."""
    options.setdefault("busy_wait_s", 30)
    profile = load_profile(device)
    with Store(home.db_path()) as store, FarmCollector(profile, store, address=None, on_event=on_event,
                                                      **options) as collector:
        plan = collector.plan(OPS[:keys])
        report = collector.run(plan)
    return plan, report


def check_each_pair_stored_once(plan, keys: int) -> dict[str, int]:
    """Every (key, round) stored exactly once, by a batch whose item count equals the rows it
    stored (a batch that measured an already-stored pair again would count more items than
    rows); returns how many rows each unit measured."""
    with sqlite3.connect(home.db_path()) as conn:
        pairs = Counter(conn.execute("SELECT key, round FROM measurements").fetchall())
        batches = conn.execute("SELECT id, unit, status, items FROM batches").fetchall()
        rows = {(b, u): n for b, u, n in conn.execute(
            "SELECT batch_id, unit, COUNT(*) FROM measurements GROUP BY batch_id, unit")}
        by_unit = dict(conn.execute("SELECT unit, COUNT(*) FROM measurements GROUP BY unit").fetchall())
    wanted = {(op.key, r) for op in OPS[:keys] for r in range(plan_rounds(plan))}
    assert set(pairs) == wanted and set(pairs.values()) == {1}
    assert all(status == "ok" for _, _, status, _ in batches), batches
    assert all(rows.get((b, u)) == items for b, u, _, items in batches), (batches, rows)
    assert sum(items for *_, items in batches) == len(wanted)
    return by_unit


def plan_rounds(plan) -> int:
    return 1 + max(r for _, r in plan.todo)


# ---- without a cluster ----------------------------------------------------------------------

def test_unit_names_resources_and_addresses():
    unit = parse_unit("pixel3@desk-a")
    assert (unit.device, unit.host, unit.resource) == ("pixel3", "desk-a", "device:pixel3@desk-a")
    assert unit_of_resource(unit.resource) == unit
    assert parse_unit("rpi4", host="lab-1").name == "rpi4@lab-1"
    for resource in ("CPU", "node:10.0.0.2", "device:nohost", "device:bad name@h"):
        assert unit_of_resource(resource) is None
    for bad in ("pixel3@", "@desk", "pi xel@h", "a@b@c", "x@../y"):
        with pytest.raises(UsageError):
            parse_unit(bad)
    assert normalize_address("head") == "head:6379"
    assert normalize_address("10.0.0.1:7000") == "10.0.0.1:7000"
    assert normalize_address("ray://head") == "ray://head:10001"
    assert normalize_address("ray://head:4000") == "ray://head:4000"


class _BusyHead:
    """Stands in for the `ray` module where a real head's client proxy fails to start a
    session (seen under CI load); everything else is the real code of `connected`."""
    SERVER_MSG = ("Initialization failure from server:\nTraceback (most recent call last):\n"
                  "  File \"proxier.py\", line 765, in Datapath\n"
                  "RuntimeError: Starting Ray client server failed. See ray_client_server_23000.err "
                  "for detailed logs.")

    def __init__(self, failures: int, message: str = SERVER_MSG):
        self.failures, self.message = failures, message
        self.inits, self.shutdowns, self.up = 0, 0, False

    def is_initialized(self):
        return self.up

    def init(self, **kwargs):
        self.inits += 1
        if self.inits <= self.failures:
            raise ConnectionAbortedError(self.message)
        self.up = True

    def shutdown(self):
        self.shutdowns += 1
        self.up = False


def test_a_client_session_the_head_could_not_start_is_asked_for_again(monkeypatch, capsys):
    from latbench.farm import cluster

    monkeypatch.setattr(cluster, "probe", lambda address: None)
    monkeypatch.setattr(cluster, "CLIENT_RETRY_PAUSE_S", 0.0)
    tries = cluster.CLIENT_INIT_ATTEMPTS

    busy = _BusyHead(failures=tries - 1)
    monkeypatch.setattr(cluster, "require_ray", lambda: busy)
    with cluster.connected("ray://head:10001") as connected_ray:
        assert connected_ray is busy and busy.up
        assert (busy.inits, busy.shutdowns) == (tries, tries - 1)  # each failed try closed
    assert busy.shutdowns == tries  # and the session, when done
    retries = [line for line in capsys.readouterr().err.splitlines() if "retrying" in line]
    assert len(retries) == tries - 1
    assert "Starting Ray client server failed" in retries[0]

    hopeless = _BusyHead(failures=tries)
    monkeypatch.setattr(cluster, "require_ray", lambda: hopeless)
    with pytest.raises(LatbenchError) as err:
        with cluster.connected("ray://head:10001"):
            pass
    assert hopeless.inits == tries
    # one line with what the server said, not just "Initialization failure from server:"
    assert str(err.value).startswith("the Ray head at ray://head:10001 answered but could not start")
    assert "Initialization failure from server: RuntimeError: Starting Ray client server failed" \
        in str(err.value)

    # the other way CI saw that child die: the proxy caught it as a zombie while starting it
    zombie = _BusyHead(failures=1, message=(
        "Initialization failure from server:\nTraceback (most recent call last):\n"
        "  File \"proxier.py\", line 396, in start_specific_server\n    cmd = psutil_proc.cmdline()\n"
        "psutil.ZombieProcess: PID still exists but it's a zombie (pid=12697)"))
    monkeypatch.setattr(cluster, "require_ray", lambda: zombie)
    with cluster.connected("ray://head:10001"):
        assert zombie.inits == 2

    # a refusal that would only repeat (here: versions that differ) is not asked again
    mismatch = _BusyHead(failures=tries, message="Initialization failure from server:\n"
                                                 "RuntimeError: Python minor versions differ")
    monkeypatch.setattr(cluster, "require_ray", lambda: mismatch)
    with pytest.raises(LatbenchError, match="cannot reach the Ray head .*Python minor versions differ"):
        with cluster.connected("ray://head:10001"):
            pass
    assert mismatch.inits == 1


def test_agent_errors_are_one_line_and_dry_run_uses_this_hosts_profile(latbench_cli, latbench_home):
    bad = latbench_cli("farm", "agent", "--address", "127.0.0.1:1", "--unit", "nosuch@h")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown device 'nosuch'" in bad.stderr
    client = latbench_cli("farm", "agent", "--address", "ray://head", "--unit", "local@h", "--no-check")
    assert client.returncode == 2 and "HEAD:6379" in client.stderr and "Traceback" not in client.stderr
    profile = write_profile(latbench_home, DEVICE)
    dry = latbench_cli("farm", "agent", "--address", "head", "--unit", f"{DEVICE}@bench", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "onnxruntime" in dry.stderr  # the device was reached and its runtime found
    variable, *argv = shlex.split(dry.stdout)
    registry = json.loads(variable.removeprefix("LATBENCH_FARM_UNITS="))
    assert registry == {f"{DEVICE}@bench": str(profile)}
    assert argv[argv.index("--address") + 1] == "head:6379"
    assert json.loads(argv[argv.index("--resources") + 1]) == {f"device:{DEVICE}@bench": 1}
    from sshd import free_port

    started = time.monotonic()  # a head nobody answers at: one line now, not Ray retrying forever
    nobody = latbench_cli("farm", "agent", "--address", f"127.0.0.1:{free_port()}", "--unit", f"{DEVICE}@bench",
                          "--no-check")
    assert nobody.returncode == 1 and nobody.stderr.count("\n") == 1 and "nothing answers at" in nobody.stderr
    assert time.monotonic() - started < 30


def test_an_agent_refuses_two_units_of_one_device(latbench_cli, latbench_home):
    """Both would read one profile, so one connection: the second phone would never be used."""
    write_profile(latbench_home, DEVICE)
    both = latbench_cli("farm", "agent", "--address", "head", "--unit", f"{DEVICE}@desk-a",
                        "--unit", f"{DEVICE}@desk-a2", "--dry-run")
    assert both.returncode == 2 and both.stderr.count("\n") == 1, both.stderr
    assert f"units {DEVICE}@desk-a and {DEVICE}@desk-a2 would both reach the one device" in both.stderr
    assert "start one agent per" in both.stderr and "--unit " + f"{DEVICE}@desk-a2" in both.stderr
    other = latbench_cli("farm", "agent", "--address", "head", "--unit", f"{DEVICE}@desk-a",
                         "--unit", "local@desk-a", "--dry-run", "--no-check")
    assert other.returncode == 0, other.stderr  # two devices on one agent stay fine


def test_stop_batch_signals_only_a_unit_worker_that_is_measuring(latbench_home):
    from latbench.farm.worker import STOP_SIGNALS, stop_batch, worker_pid_file

    other = subprocess.Popen(["sleep", "30"])
    worker = subprocess.Popen(["bash", "-c", 'exec -a "ray::UnitWorker.run_batch" sleep 30'])
    unit = "dev@host-a"
    try:
        wait_for(lambda: Path(f"/proc/{worker.pid}/cmdline").read_bytes().startswith(b"ray::"), 10, "exec -a")
        assert stop_batch(unit, other.pid, "Ctrl-C") is False  # a pid reused by another process
        worker_pid_file(unit).parent.mkdir(parents=True)
        worker_pid_file(unit).write_text(f"{other.pid}\n")
        assert stop_batch(unit, worker.pid, "Ctrl-C") is False  # the file names the worker now
        worker_pid_file(unit).write_text(f"{worker.pid}\n")  # as a worker Ray restarted writes it
        assert stop_batch(unit, other.pid, "SIGTERM") is True  # the head's pid is stale
        assert worker.wait(10) == -STOP_SIGNALS["SIGTERM"] and other.poll() is None
        assert stop_batch(unit, worker.pid, "Ctrl-C") is False  # gone
    finally:
        for proc in (other, worker):
            proc.kill()
            proc.wait()


def test_a_unit_worker_writes_its_pid_where_the_stop_reads_it(latbench_home):
    from latbench.farm.worker import UnitWorker, worker_pid_file

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        UnitWorker("dev@host-b")  # as Ray starts (or restarts) one on the unit's host
        assert worker_pid_file("dev@host-b").read_text() == f"{os.getpid()}\n"
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_heads_bookkeeping_is_not_cut_by_a_stop(sig):
    """A Ctrl-C (or the collection's SIGTERM handler) waits for the end of the block that sends a
    batch or stores one, then is raised as it would have been."""
    from latbench.farm.dispatch import _stop_held

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    before = signal.signal(signal.SIGTERM, on_sigterm)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt) as stop:
            with _stop_held():
                os.kill(os.getpid(), sig)
                time.sleep(0.05)  # the handler runs here, were it not held
                done.append("stored")
        assert done == ["stored"]
        assert stop.value.args == (("SIGTERM",) if sig == signal.SIGTERM else ())
        assert signal.getsignal(signal.SIGTERM) is on_sigterm
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_head_replaces_rays_sigterm_handler_but_not_its_callers(make_profile):
    from latbench.collect import Collector

    def callers(signum, frame):
        pass

    def rays(signum, frame):
        sys.exit(signum)

    rays.__module__ = "ray._private.worker"
    before = signal.getsignal(signal.SIGTERM)
    try:
        for handler, replaced in ((callers, False), (rays, True)):
            signal.signal(signal.SIGTERM, handler)
            collector = Collector(load_profile(make_profile("test-sigterm-handlers")), None, lock=False)
            with contextlib.ExitStack() as collector._stack:
                collector._stop_on_sigterm(over_ray=True)
                assert (signal.getsignal(signal.SIGTERM) is not handler) is replaced
            assert signal.getsignal(signal.SIGTERM) is handler  # given back on close
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_farm_collections_text_names_the_units():
    """Which unit a batch failed on, what each unit measured, and how alike the units time."""
    from latbench.cli.collect import retry_line, unit_lines
    from latbench.collect import Report
    from latbench.farm.dispatch import FarmReport

    assert retry_line(1, 3, {"error": "Broken pipe", "delay_s": 2.0, "unit": "pixel3@lab-1"}) == \
        "batch failed on pixel3@lab-1 (Broken pipe); retry 1/2 in 2 s"
    assert retry_line(2, 3, {"error": "timeout", "delay_s": 4.0}) == "batch failed (timeout); retry 2/2 in 4 s"
    report = FarmReport(units={"pixel3@a": {"measured": 8, "batches": 2}, "pixel3@b": {"measured": 4, "batches": 1}},
                        unit_gaps=[0.02, 0.10, 0.04])
    (line,) = unit_lines(report)
    assert line.startswith("units: pixel3@a measured 8 in 2 batches, pixel3@b measured 4 in 1 batch; "
                           "on 3 keys measured by 2+ units their medians differ by 4.0% (median, max 10.0%)")
    assert report.to_dict()["keys_on_several_units"] == 3 and report.to_dict()["max_unit_gap"] == 0.10
    assert unit_lines(Report()) == []  # not a farm: nothing to say

# ---- on the cluster -------------------------------------------------------------------------

def test_a_collection_splits_over_the_pool_and_records_each_unit(farm, warm_home, make_profile):
    make_profile(DEVICE, protocol={"batch_size": 2})  # the head's profile: 8 ops x 2 rounds = 8 batches
    seen = {}

    def on_event(stage, done, total, info):
        if stage == "measure" and "status" not in seen:
            seen["status"] = farm_status(ray)

    plan, report = collect_on_farm(8, on_event=on_event)
    by_unit = check_each_pair_stored_once(plan, 8)
    assert set(by_unit) == {farm.local.name, farm.ssh.name}
    assert {u: r["measured"] for u, r in report.units.items()} == by_unit
    assert report.measured == 16 and not report.failed and report.batches_ok == 8
    with sqlite3.connect(home.db_path()) as conn:  # keys whose rounds two units measured
        shared = [k for (k,) in conn.execute("SELECT key FROM measurements GROUP BY key "
                                             "HAVING COUNT(DISTINCT unit) > 1 ORDER BY key")]
    assert len(report.unit_gaps) == len(shared) and all(g >= 0 for g in report.unit_gaps)
    # models travelled as bytes into each agent's own cache (the keys it measured), and the ssh
    # unit pushed them on to its board
    with sqlite3.connect(home.db_path()) as conn:
        keys = dict(conn.execute("SELECT unit, COUNT(DISTINCT key) FROM measurements GROUP BY unit").fetchall())
    for unit in (farm.local, farm.ssh):
        assert len(list((farm.homes[unit.name] / "farm" / "models").rglob("*.onnx"))) == keys[unit.name]
    assert len(list((farm.ssh_workdir / "models").glob("*.onnx"))) == keys[farm.ssh.name]
    # while it ran, status showed both units busy and the collection's queue
    during = seen["status"]
    states = {u["unit"]: (u["state"], u["hostname"], u["node_ip"]) for u in during["units"]}
    assert {states[u.name][0] for u in (farm.local, farm.ssh)} == {"busy"}
    assert all(states[u.name][1] and states[u.name][2] for u in (farm.local, farm.ssh))
    (queue,) = [c for c in during["collections"] if c["device"] == DEVICE]
    assert queue["total"] == 16 and queue["queued_batches"] + len(queue["running"]) <= 8
    wait_for(lambda: set(unit_states().values()) == {"free"}, 60, "units released")


def test_a_units_batch_waits_while_its_hardware_is_measured_by_another(farm, warm_home, make_profile):
    from latbench.locks import device_lock
    from latbench.profiles import parse_profile

    make_profile(DEVICE, protocol={"batch_size": 2})
    local_profile = parse_profile(farm.homes[farm.local.name] / "devices" / f"{DEVICE}.yaml")
    released = {}
    # a plain `latbench collect` on the agent's host, until the other unit has stored a batch:
    # the local unit's batch surely waits, however slow this host is
    lock = device_lock(local_profile, farm.homes[farm.local.name] / "locks")
    lock.__enter__()

    def release_after_the_other_units_batch(stage, done, total, info):
        if stage == "measure" and info["unit"] == farm.ssh.name and not released:
            released["at"] = time.time()
            lock.__exit__(None, None, None)
    try:
        plan, report = collect_on_farm(4, on_event=release_after_the_other_units_batch)
    finally:
        if not released:
            lock.__exit__(None, None, None)
    check_each_pair_stored_once(plan, 4)
    with sqlite3.connect(home.db_path()) as conn:
        started = [t for (t,) in conn.execute("SELECT started_at FROM batches WHERE unit=?", (farm.local.name,))]
    assert released and started and min(started) >= released["at"] - 0.05  # none timed beside the holder
    assert report.measured == 8 and not report.failed


def test_a_unit_two_live_nodes_offer_is_not_used(farm, warm_home, make_profile, tmp_path):
    make_profile(DEVICE, protocol={"batch_size": 2})
    twin = farm.add_agent(farm.local, tmp_path / "twin", write_profile(tmp_path / "twin", DEVICE))
    wait_for(lambda: sum(1 for n in ray.nodes() if n["Alive"] and farm.local.resource in n["Resources"]) == 2,
             30, "the second agent for the same unit")
    try:
        plan, report = collect_on_farm(2)
    finally:
        farm.cluster.remove_node(twin)
    assert "offered by 2 live nodes" in report.skipped[farm.local.name]  # two agents for one phone
    by_unit = check_each_pair_stored_once(plan, 2)
    assert set(by_unit) == {farm.ssh.name}


def test_a_pool_whose_only_unit_two_agents_offer_says_so_not_busy(farm, warm_home, make_profile, tmp_path):
    device = "test-twin"
    make_profile(device)
    unit = Unit(device, "agent-twin")
    nodes = [farm.add_agent(unit, tmp_path / f"t{i}", write_profile(tmp_path / f"t{i}", device)) for i in (1, 2)]
    try:
        wait_for(lambda: sum(1 for n in ray.nodes() if n["Alive"] and unit.resource in n["Resources"]) == 2,
                 30, "two agents for one unit")
        with pytest.raises(LatbenchError) as err:
            collect_on_farm(2, device=device, busy_wait_s=1)
    finally:
        for node in nodes:
            farm.cluster.remove_node(node)
    # the user is told to stop an agent, not to wait for a collection that does not exist
    assert "offered by 2 live nodes" in err.value.message and "busy" not in err.value.message
    assert "wait" not in (err.value.hint or "")


def python_that_fails_batches(tmp_path: Path) -> Path:
    """A unit whose runtime answers `describe` but fails every batch (a phone unplugged)."""
    python = tmp_path / "python-that-fails"
    python.write_text(f"""#!/bin/sh
if [ "$2" = run ]; then echo "phone unplugged" >&2; exit 3; fi
exec {shlex.quote(sys.executable)} "$@"
""")
    python.chmod(0o755)
    return python


def broken_pool(farm, make_profile, tmp_path: Path, device: str, good: bool) -> tuple[list, Unit, Unit | None]:
    protocol, retry = {"batch_size": 2, "rounds": 1}, {"backoff_s": 0.2}
    make_profile(device, protocol=protocol, retry=retry)
    bad = Unit(device, "agent-broken")
    nodes = [farm.add_agent(bad, tmp_path / "bad", write_profile(
        tmp_path / "bad", device, protocol=protocol, retry=retry, python=str(python_that_fails_batches(tmp_path))))]
    fine = Unit(device, "agent-fine") if good else None
    if fine:
        nodes.append(farm.add_agent(fine, tmp_path / "fine", write_profile(tmp_path / "fine", device,
                                                                          protocol=protocol, retry=retry)))
    wait_for(lambda: {u.name for u in (bad, fine) if u} <= set(unit_states()), 60, "the units")
    return nodes, bad, fine


def test_a_unit_whose_device_fails_every_batch_is_given_up_and_the_pool_measures_all(
        farm, warm_home, make_profile, tmp_path):
    nodes, bad, fine = broken_pool(farm, make_profile, tmp_path, "test-broken-pool", good=True)
    try:
        plan, report = collect_on_farm(12, device="test-broken-pool")
    finally:
        for node in nodes:
            farm.cluster.remove_node(node)
    assert report.measured == 12 and not report.failed, report.failed
    assert report.units[fine.name]["measured"] == 12
    lost = report.units[bad.name]["lost"]
    assert lost and "3 batches in a row failed" in lost and "phone unplugged" in lost
    assert report.units[bad.name]["batches"] == 3  # max_failed_batches, then its work went elsewhere


def test_a_farm_whose_every_unit_fails_stops_after_max_failed_batches(farm, warm_home, make_profile, tmp_path):
    nodes, bad, _ = broken_pool(farm, make_profile, tmp_path, "test-broken-only", good=False)
    try:
        plan, report = collect_on_farm(12, device="test-broken-only")
    finally:
        for node in nodes:
            farm.cluster.remove_node(node)
    # 3 attempts, not every batch 3 times (6 batches x 3 attempts = 18 on an unplugged phone)
    assert report.units[bad.name]["batches"] == 3 and report.measured == 0
    assert set(report.failed) == {op.key for op in OPS[:12]}
    assert all("no unit of test-broken-only left on the farm" in why and "phone unplugged" in why
               for why in report.failed.values()), report.failed


def test_collect_trust_new_host_reaches_the_farms_ssh_units(farm, warm_home, make_profile, tmp_path, sshd):
    device = "test-trust"
    make_profile(device, transport="ssh", python=sys.executable, connection={"host": "elsewhere"})
    unit = Unit(device, "agent-trust")
    known = tmp_path / "known_hosts"
    known.write_text("")  # the agent host has never seen the board
    profile = write_profile(tmp_path / "tr", device, transport="ssh", python=sys.executable, connection={
        "host": sshd.host, "port": sshd.port, "user": sshd.user, "key_file": str(sshd.user_key),
        "known_hosts": str(known), "connect_timeout_s": 5, "workdir": str(tmp_path / "board")})
    node = farm.add_agent(unit, tmp_path / "tr", profile)
    try:
        wait_for(lambda: unit.name in unit_states(), 60, "the unit")
        with Store(home.db_path()) as store:
            collector = FarmCollector(load_profile(device), store, address=None, busy_wait_s=30)
            with pytest.raises(LatbenchError, match="trust-new-host"):
                with collector:  # without it: refused, with the flag named in the hint
                    pass
            collector = FarmCollector(load_profile(device), store, address=None, busy_wait_s=30)
            collector.transport.trust_new_host = True  # what `collect --farm --trust-new-host` does
            with collector:
                assert list(collector.units) == [unit.name]
    finally:
        farm.cluster.remove_node(node)
    assert known.read_text().strip()  # the unit's host remembered the board's key


def test_a_unit_with_other_settings_is_refused(farm, warm_home, make_profile):
    make_profile(DEVICE, protocol={"runs": 7})  # the agents' profiles time 5 runs
    with pytest.raises(LatbenchError) as err:
        collect_on_farm(2)
    text = str(err.value)
    assert "protocol.runs: 5 there, 7 here" in text and "not be comparable" in text
    assert DEVICE in text and "@agent-" in text
    with sqlite3.connect(home.db_path()) as conn:
        assert conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 0
    wait_for(lambda: set(unit_states().values()) == {"free"}, 60, "units released")


def test_a_crashed_unit_worker_is_restarted_and_its_batch_retried_by_ray(farm, warm_home, make_profile):
    make_profile(DEVICE, protocol={"batch_size": 2})  # 6 ops x 2 rounds = 6 batches
    crashed = {}

    def crash_the_local_worker(pid: int):
        os.kill(pid, signal.SIGKILL)  # a worker process dying, its node alive
        crashed["pid"] = pid

    def on_event(stage, done, total, info):
        if stage == "measure" and info["unit"] == farm.local.name and "timer" not in crashed:
            pid = info["report"].units[farm.local.name]["worker_pids"][0]
            crashed["timer"] = threading.Timer(0.3, crash_the_local_worker, (pid,))  # into its next batch
            crashed["timer"].start()

    plan, report = collect_on_farm(6, on_event=on_event)
    crashed["timer"].join()
    by_unit = check_each_pair_stored_once(plan, 6)
    local = report.units[farm.local.name]
    assert crashed["pid"] == local["worker_pids"][0] and len(local["worker_pids"]) == 2  # restarted
    assert local["lost"] is None and report.passes == 1 and not report.failed  # Ray retried, no re-plan
    assert by_unit[farm.local.name] == local["measured"] > 2  # it measured after its restart


def test_a_node_killed_midway_loses_nothing_and_stores_nothing_twice(farm, warm_home, make_profile, tmp_path):
    make_profile(DEVICE, protocol={"batch_size": 2})  # 12 ops x 2 rounds = 12 batches over 3 units
    doomed = Unit(DEVICE, "agent-c")
    # its second batch hangs, so the node is surely removed while it measures (not after the
    # doomed unit ran out of batches: then it was never lost)
    first, second, marker = tmp_path / "first-batch", tmp_path / "second-batch", f"8{time.time() % 1000:.4f}"
    python = python_that_hangs(tmp_path, second, marker, first_runs=f"""  # batch 1 measures; the next hang
  if [ ! -e {shlex.quote(str(first))} ]; then touch {shlex.quote(str(first))}; exec {shlex.quote(sys.executable)} "$@"; fi
""")
    node = farm.add_agent(doomed, tmp_path / "agent-c",
                          write_profile(tmp_path / "agent-c", DEVICE, python=str(python)))
    killed = {}

    def on_event(stage, done, total, info):
        if stage == "measure" and done == total:  # what `farm status` showed at the end
            killed["status"] = farm_status(ray)

    def kill_while_it_measures():
        try:
            wait_for(second.exists, 60, "the doomed unit's second batch")
            wait_for(lambda: any(u["unit"] == doomed.name and u["measuring"] for u in farm_status(ray)["units"]),
                     30, "farm status to show the doomed unit measuring")
        finally:
            farm.cluster.remove_node(node)
            killed["at"] = time.monotonic()

    killer = threading.Thread(target=kill_while_it_measures)
    killer.start()
    try:
        plan, report = collect_on_farm(12, on_event=on_event, lost_after_s=2, poll_s=0.3)
    finally:
        killer.join(90)
        subprocess.run(["pkill", "-f", f"sleep {marker}"])
    assert "at" in killed
    by_unit = check_each_pair_stored_once(plan, 12)
    assert report.measured == 24 and not report.failed
    assert report.units[doomed.name]["lost"] and by_unit[doomed.name] >= 2  # it measured, then was lost
    assert by_unit[doomed.name] == report.units[doomed.name]["measured"]
    assert {farm.local.name, farm.ssh.name} <= set(by_unit)
    assert report.passes >= 2  # its batch in flight was planned again from the store
    (queue,) = [c for c in killed["status"]["collections"] if c["device"] == DEVICE]
    assert doomed.name in queue["lost"] and doomed.name not in queue["units"]


def python_that_hangs(tmp_path: Path, printed: Path, marker: str, first_runs: str = "") -> Path:
    """A `python` for a unit's profile: the real one, but a batch run (after the shell lines
    `first_runs`) prints its first 2 results, touches `printed` and hangs in `sleep MARKER`."""
    python = tmp_path / "python-that-hangs"
    python.write_text(f"""#!/bin/sh
if [ "$2" = run ]; then
{first_runs}  {shlex.quote(sys.executable)} "$@" | head -n 3
  touch {shlex.quote(str(printed))}
  exec sleep {marker}
fi
exec {shlex.quote(sys.executable)} "$@"
""")
    python.chmod(0o755)
    return python


@pytest.mark.parametrize("sig, by", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_ctrl_c_on_the_head_keeps_the_models_a_units_batch_had_finished(farm, warm_home, make_profile,
                                                                         tmp_path, sig, by):
    """Ctrl-C (or SIGTERM) on the head stops each unit's batch in flight (its run on the device
    is killed) and stores the models that batch had finished, as a single-device collection does."""
    device, protocol = f"test-stop-{by.lower()}", {"batch_size": 4, "rounds": 1}
    make_profile(device, protocol=protocol)
    printed, marker = tmp_path / "printed", f"7{time.time() % 1000:.4f}"
    python = python_that_hangs(tmp_path, printed, marker)
    unit = Unit(device, "agent-e")
    node = farm.add_agent(unit, tmp_path / "agent-e", write_profile(tmp_path / "agent-e", device,
                                                                    python=str(python), protocol=protocol))

    events = []
    try:
        with Store(home.db_path()) as store, FarmCollector(  # stop_wait_s: back in 60 s means stopped
                load_profile(device), store, address=None, stop_wait_s=300,
                on_event=lambda stage, done, total, info: events.append((stage, info))) as collector:
            plan = collector.plan(OPS[:4])
            with signal_when(printed, sig, timeout_s=90) as signalled, pytest.raises(KeyboardInterrupt):
                collector.run(plan)
            stopped_at = time.monotonic()
            assert printed.exists()
            first, second, *_ = plan.batches[0]
            assert store.measured(plan.context) == {first, second}
        with sqlite3.connect(home.db_path()) as conn:
            assert conn.execute("SELECT unit, status, items, error FROM batches").fetchall() == [
                (unit.name, "partial", 4, f"stopped by {by} on the head")]
            assert conn.execute("SELECT COUNT(*) FROM measurements WHERE unit = ?", (unit.name,)).fetchone() == (2,)
        assert [(info["by"], info["wait_s"]) for stage, info in events if stage == "stopping"] == [(by, 300)]
        # the run hangs for hours: back within a minute is back because it was stopped (the
        # margin is for a loaded host starting the stop task's worker)
        assert stopped_at - signalled[0] < 60, "the unit's stopped batch was not back at once"
        assert not running(f"sleep {marker}")
        wait_for(lambda: unit_states().get(unit.name) == "free", 30, "the stopped unit to be free again")
    finally:
        farm.cluster.remove_node(node)


@pytest.mark.parametrize("how", ["worker crash", "agent rejoin"])
def test_ctrl_c_reaches_a_unit_worker_ray_restarted_since_the_head_heard_from_it(
        farm, warm_home, make_profile, tmp_path, how):
    """The worker crashes (or its agent's node leaves and a new one joins) in its second batch;
    Ray restarts the worker and retries the batch there, and Ctrl-C comes before the head has
    heard from the new worker: the stop still reaches it (it left its pid on its host; the head
    looks up the unit's node), and the models it finished are stored."""
    device, protocol = f"test-stop-{how.split()[-1]}", {"batch_size": 4, "rounds": 1}
    make_profile(device, protocol=protocol)
    runs, second, printed = tmp_path / "runs", tmp_path / "second", tmp_path / "printed"
    marker = f"7{time.time() % 1000:.4f}"
    python = python_that_hangs(tmp_path, printed, marker, first_runs=f"""  # run 1 measures; run 2 hangs
  echo x >> {shlex.quote(str(runs))}
  n=$(wc -l < {shlex.quote(str(runs))})
  if [ "$n" -eq 1 ]; then exec {shlex.quote(sys.executable)} "$@"; fi
  if [ "$n" -eq 2 ]; then touch {shlex.quote(str(second))}; exec sleep 1{marker}; fi
""")
    unit = Unit(device, "agent-f")
    agent = (unit, tmp_path / "agent-f", write_profile(tmp_path / "agent-f", device, python=str(python),
                                                       protocol=protocol))
    nodes, rejoined = [farm.add_agent(*agent)], []
    pids, signalled = [], []

    def on_event(stage, done, total, info):
        if stage == "measure" and not pids:
            pids.append(info["report"].units[unit.name]["worker_pids"][0])

    def crash_then_ctrl_c():
        wait_for(lambda: second.exists() and pids, 90, "the second batch")
        if how == "worker crash":
            os.kill(pids[0], signal.SIGKILL)  # Ray restarts the worker and retries the batch
        else:  # the same unit on a new node: Ray restarts the worker there
            farm.cluster.remove_node(nodes[0])
            rejoined.append(start_agent_node(farm, *agent))  # as `latbench farm agent` does
        wait_for(printed.exists, 90, "the retried batch's first results")
        signalled.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    try:
        with Store(home.db_path()) as store, FarmCollector(load_profile(device), store, address=None,
                                                           on_event=on_event, lost_after_s=120,
                                                           stop_wait_s=300) as collector:
            plan = collector.plan(OPS[:8])  # lost_after_s: the rejoin may take a loaded host a while
            threading.Thread(target=crash_then_ctrl_c, daemon=True).start()
            with pytest.raises(KeyboardInterrupt):
                collector.run(plan)
            assert collector.units[unit.name].pid == pids[0]  # the head never heard from the new one
            assert len(store.measured(plan.context)) == 4 + 2
        assert time.monotonic() - signalled[0] < 60, "the restarted worker's batch was not back at once"
        with sqlite3.connect(home.db_path()) as conn:
            assert conn.execute("SELECT status, items, error FROM batches ORDER BY id").fetchall() == [
                ("ok", 4, None), ("partial", 4, "stopped by Ctrl-C on the head")]
        assert not running(f"sleep {marker}")
        if how == "worker crash":  # run 2, left timing by the crash: the new worker stopped it first
            assert not running(f"sleep 1{marker}")
    finally:
        subprocess.run(["pkill", "-f", f"sleep 1?{marker}"])  # run 2's, orphaned by the crash
        for node in nodes:
            with contextlib.suppress(Exception):  # gone already when rejoined
                farm.cluster.remove_node(node)
        for process in rejoined:
            process.terminate()
            process.wait(60)


def test_agent_status_and_collect_commands(farm, warm_home, make_profile, latbench_cli, tmp_path):
    make_profile(DEVICE, protocol={"batch_size": 2})  # the head's: 6 ops, 1 round = 3 batches, 3 units
    agent_home = tmp_path / "agent-d"
    write_profile(agent_home, DEVICE)
    env = dict(os.environ, LATBENCH_HOME=str(agent_home), COLUMNS="200")
    agent = subprocess.Popen(
        [sys.executable, "-m", "latbench", "farm", "agent", "--address", farm.address, "--unit",
         f"{DEVICE}@agent-d", "--object-store-mb", "80"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    unit_d = f"{DEVICE}@agent-d"
    try:
        wait_for(lambda: unit_states().get(unit_d) == "free" or agent.poll() is not None, 60, "the agent's unit")
        assert agent.poll() is None, agent.stdout.read()
        # Ray Client: each failed session start on a busy head costs about 40 s before the retry
        status = latbench_cli("farm", "status", "--address", f"ray://127.0.0.1:{farm.client_port}", "--json",
                              timeout_s=300)
        assert status.returncode == 0, status.stderr
        units = {u["unit"]: u for u in json.loads(status.stdout)["units"]}
        assert {farm.local.name, farm.ssh.name, unit_d} <= set(units)
        assert all(units[u]["state"] == "free" and units[u]["node_ip"] for u in (farm.local.name, unit_d))
        done = latbench_cli("collect", "--device", DEVICE, "--farm", farm.address, "--limit", "6",
                            "--rounds", "1", "--json")
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["measured"] == 6 and not summary["failed"]
        assert unit_d in summary["units"] and summary["units"][unit_d]["measured"] > 0
        assert "farm: 3 unit(s)" in done.stderr
        assert (agent_home / "farm" / "models").is_dir()  # it measured from its own cache
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(30)
    wait_for(lambda: unit_d not in unit_states(), 60, "the stopped agent's unit to leave the farm")
    assert {farm.local.name, farm.ssh.name} <= set(unit_states())
