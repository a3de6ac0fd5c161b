"""`latbench lut`: the measured latency table of a device (median over rounds per key)."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from latbench.cli import output
from latbench.errors import UsageError

COLUMNS = ["key", "kind", "median_ms", "p10_ms", "p90_ms", "round_spread", "rounds", "count"]
EXAMPLES = """\
examples:
  latbench lut --device local                  # a table on the terminal
  latbench lut --device local --csv > local.csv
  latbench lut --device local --json --out local.json
  latbench lut --device local --tables         # the device's tables, newest first
  latbench lut --device local --table 3f9c02ab # an older table (runtime version, settings)

A device has one table per runtime version and measurement settings (threads, protocol,
cores); rows come from the most recently measured one unless --table names another by the
id --tables prints (a prefix is enough). median_ms is the median over rounds of each round's median, round_spread is
(max - min) / median of those round medians."""


def add_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text.capitalize() + ".",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", required=True, help="device profile name")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="write CSV")
    fmt.add_argument("--json", action="store_true", help="write JSON (rows plus their context)")
    p.add_argument("--kind", choices=["op", "network"], help="only ops or only whole networks")
    p.add_argument("--out", type=Path, help="write to this file instead of stdout")
    p.add_argument("--table", metavar="ID", help="read this table (default: the newest; see --tables)")
    p.add_argument("--tables", action="store_true",
                   help="list the device's tables (runtime, settings, keys) instead of rows")


def run(args) -> int:
    from latbench.store import device_table

    if args.tables:
        return _list_tables(args)
    info, rows, _ = device_table(args.device, args.table)
    if args.kind:
        rows = [r for r in rows if r["kind"] == args.kind]
    ctx = info.context
    if args.json:
        text = _json(ctx, info.settings, rows)
    elif args.csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    else:
        output.table(f"{ctx.device}: table {ctx.table_id}, {ctx.runtime_label}{_header(info.settings)}, "
                     f"{len(rows)} keys",
                     COLUMNS, [[r[c] for c in COLUMNS] for r in rows])
        return 0
    _write(args, text, f"{len(rows)} rows")
    return 0


def _write(args, text: str, what: str) -> None:
    if args.out:
        try:
            args.out.write_text(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}",
                             "give --out a file path you can write") from None
        output.note(f"wrote {what} to {args.out}")
    else:
        sys.stdout.write(text)


TABLE_COLUMNS = ["table", "runtime", "threads", "protocol", "ops", "networks", "measurements",
                 "last_measured"]


def _list_tables(args) -> int:
    """Every table of the device, newest first: what --table picks from."""
    import time

    from latbench import home
    from latbench.store import Store, device_table

    if args.table or args.kind:
        raise UsageError("--tables lists every table; it takes no --table or --kind",
                         "drop --table/--kind, or drop --tables to read one table's rows")
    device_table(args.device)  # the one error for a device with nothing stored
    with Store(home.db_path()) as store:
        found = store.contexts(args.device)
    rows = [{"table": c.context.table_id, "runtime": c.context.runtime_label,
             "threads": c.settings.get("threads", ""),
             "protocol": _protocol(c.settings),  # "" when imported: the runtime names the source
             "ops": c.keys - c.networks, "networks": c.networks, "measurements": c.measurements,
             "last_measured": time.strftime("%Y-%m-%d %H:%M", time.localtime(c.last_measured_at))}
            for c in found]
    if args.json:
        import json

        text = json.dumps([{**r, "settings_hash": c.context.settings_hash, "settings": c.settings}
                           for r, c in zip(rows, found)], indent=2) + "\n"
    elif args.csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    else:
        output.table(f"{args.device}: {output.plural(len(rows), 'table')}, newest first "
                     "(read an older one with --table ID)",
                     TABLE_COLUMNS, [[r[c] for c in TABLE_COLUMNS] for r in rows])
        return 0
    _write(args, text, output.plural(len(rows), "table"))
    return 0


def _protocol(settings: dict) -> str:
    """"warm-up 10 runs, timed >= 20 runs (to +-0.5% or 0.5 s)" for a collected table (rounds
    are a column); "" for an imported one, whose settings name only its source."""
    protocol = settings.get("protocol")
    if not isinstance(protocol, dict):
        return ""
    text = f"warm-up {protocol.get('warmup_runs', '?')} runs, timed >= {protocol.get('runs', '?')} runs"
    if protocol.get("rel_ci"):
        text += f" (to +-{100 * protocol['rel_ci']:g}% or {protocol.get('max_time_s', '?'):g} s)"
    return text


def _header(settings: dict) -> str:
    """", 1 thread(s), warm-up ..." after the runtime, or "" for an imported table."""
    protocol = _protocol(settings)
    return f", {settings.get('threads', '?')} thread(s), {protocol}" if protocol else ""


def _json(ctx, settings: dict, rows: list[dict]) -> str:
    import json

    return json.dumps({"device": ctx.device, "table": ctx.table_id, "runtime": ctx.runtime, "runtime_version": ctx.runtime_version,
                       "settings_hash": ctx.settings_hash, "settings": settings, "rows": rows}, indent=2) + "\n"
