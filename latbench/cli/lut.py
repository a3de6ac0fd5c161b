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

Rows come from the most recently measured runtime version and settings of the device;
median_ms is the median over rounds of each round's median, round_spread is
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


def run(args) -> int:
    from latbench.store import latest_table

    info, rows = latest_table(args.device)
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
        output.table(f"{ctx.device}: {ctx.runtime_label}{_protocol(info.settings)}, settings "
                     f"{ctx.settings_hash}, {len(rows)} keys",
                     COLUMNS, [[r[c] for c in COLUMNS] for r in rows])
        return 0
    if args.out:
        try:
            args.out.write_text(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}",
                             "give --out a file path you can write") from None
        output.note(f"wrote {len(rows)} rows to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _protocol(settings: dict) -> str:
    """", 1 thread(s), warm-up 10 runs, timed >= 20 runs" for a collected table (rounds are a
    column); "" for an imported one, whose settings name only its source."""
    protocol = settings.get("protocol")
    if not isinstance(protocol, dict):
        return ""
    text = (f", {settings.get('threads', '?')} thread(s), warm-up {protocol.get('warmup_runs', '?')} runs, "
            f"timed >= {protocol.get('runs', '?')} runs")
    if protocol.get("rel_ci"):
        text += f" (to +-{100 * protocol['rel_ci']:g}% or {protocol.get('max_time_s', '?'):g} s)"
    return text


def _json(ctx, settings: dict, rows: list[dict]) -> str:
    import json

    return json.dumps({"device": ctx.device, "runtime": ctx.runtime, "runtime_version": ctx.runtime_version,
                       "settings_hash": ctx.settings_hash, "settings": settings, "rows": rows}, indent=2) + "\n"
