"""`latbench farm`: a device farm on Ray. `farm agent` runs on each host that devices hang off;
`farm status` shows the units, their hosts, busy or free, and the collections' queues."""

from __future__ import annotations

import argparse
import shlex

from latbench.cli import output
from latbench.cli.arguments import int_at_least, port_number

EXAMPLES = """\
examples:
  latbench farm agent --head --unit pixel3@desk-a                    # the head host, with a phone
  latbench farm agent --address HEAD:6379 --unit pixel3@lab-1 --unit rpi4@lab-1
  latbench farm status --address HEAD:6379
  latbench collect --device pixel3 --farm HEAD:6379                  # measure on every pixel3 unit

A unit is DEVICE@HOST: the device profile DEVICE as found on the agent's host
(./device_profiles, then $LATBENCH_HOME/devices). Needs the `farm` extra (Ray) on every
host, with the same versions of Python, Ray and latbench. See docs/farm.md."""


def add_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    farm = p.add_subparsers(dest="farm_command", metavar="{agent,status}", required=True)

    a = farm.add_parser("agent", help="run this host as a farm node that offers its devices",
                        description="Check this host's devices, then run it as a Ray node offering one "
                                    "resource per unit (blocks; Ctrl-C or SIGTERM stops it).",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = a.add_mutually_exclusive_group(required=True)
    where.add_argument("--address", metavar="HEAD:PORT",
                       help="join the farm whose head is at HEAD:PORT (port 6379 if left out)")
    where.add_argument("--head", action="store_true", help="start the farm's head node here")
    a.add_argument("--unit", action="append", default=[], metavar="DEVICE[@HOST]",
                   help="a device attached here (repeat for each; a head may have none); "
                        "HOST defaults to this host's name")
    a.add_argument("--port", type=port_number, default=6379, help="port of a new head (with --head; default 6379)")
    a.add_argument("--num-cpus", type=int_at_least(0), default=0, metavar="N",
                   help="CPUs this node lends to other Ray work (default 0: nothing else runs where devices are timed)")
    a.add_argument("--object-store-mb", type=int_at_least(1), default=None, metavar="MB",
                   help="Ray object store size for this node (default: Ray's)")
    a.add_argument("--node-ip-address", default=None, metavar="IP", help="this host's address as the farm sees it")
    a.add_argument("--no-check", action="store_true", help="do not reach each device before joining")
    a.add_argument("--trust-new-host", action="store_true",
                   help="SSH: accept and remember the host key of a board never connected to before")
    a.add_argument("--dry-run", action="store_true", help="print the checks and the `ray start` command, start nothing")

    s = farm.add_parser("status", help="units, their hosts, busy or free, and the collections' queues",
                        description="Show the farm's units, their hosts, busy or free, and what running "
                                    "collections have left.",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--address", default=None, metavar="HEAD",
                   help="HEAD:PORT or ray://HEAD:10001 (default: RAY_ADDRESS, else the head on this host)")
    s.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    return _agent(args) if args.farm_command == "agent" else _status(args)


def _agent(args) -> int:
    from latbench.errors import UsageError
    from latbench.farm import agent

    if not args.unit and not args.head:
        raise UsageError("an agent needs at least one --unit",
                         "add --unit DEVICE@HOST for each device attached here, e.g. --unit pixel3@desk-a")
    units = agent.resolve_units(args.unit)
    argv = agent.ray_start_argv(units, address=args.address, head=args.head, port=args.port,
                                num_cpus=args.num_cpus, object_store_mb=args.object_store_mb,
                                node_ip=args.node_ip_address)
    if not (args.head or args.dry_run):  # Ray's node would retry an address nobody answers at, forever
        from latbench.farm.cluster import probe

        probe(args.address)
    for au in units:
        label = "not checked" if args.no_check else agent.check_unit(au, trust_new_host=args.trust_new_host)
        output.note(f"unit {au.unit}: {au.profile.name} ({au.profile.transport}, {au.profile.source}), "
                    f"{label}, resource {au.unit.resource}")
    env = agent.agent_env(units)
    if args.dry_run:
        registry = {k: v for k, v in env.items() if k.startswith("LATBENCH_FARM")}
        print(" ".join(f"{k}={shlex.quote(v)}" for k, v in registry.items()), shlex.join(argv))
        return 0
    output.note(("starting the farm head" if args.head else f"joining the farm at {args.address}")
                + " as a Ray node (Ctrl-C stops it)")
    agent.exec_node(argv, env)
    return 0  # not reached


def _status(args) -> int:
    from latbench.farm.cluster import connected
    from latbench.farm.status import farm_status

    with connected(args.address) as ray:
        status = farm_status(ray)
    if args.json:
        output.print_json(status)
        return 0
    rows = [[u["unit"], u["state"], u["measuring"], u["hostname"], u["node_ip"]] for u in status["units"]]
    output.table("units", ["unit", "state", "measuring (items)", "hostname", "node_ip"], rows)
    if not rows:
        output.note("no units: start an agent with `latbench farm agent --address HEAD:6379 --unit DEVICE@HOST`")
    if status["collections"]:
        output.table("collections", ["device", "head", "queued batches", "queued items", "running", "measured",
                                     "lost units"],
                     [[c["device"], c.get("head"), c.get("queued_batches"), c.get("queued_items"),
                       ", ".join(f"{u}: {n}" for u, n in (c.get("running") or {}).items()) or None,
                       f"{c.get('measured', 0)}/{c.get('total', 0)}", ", ".join(c.get("lost") or {}) or None]
                      for c in status["collections"]])
    return 0
