"""`latbench devices`: the device profiles latbench can find, and where each comes from."""

from __future__ import annotations

import argparse

from latbench.cli import output

EXAMPLES = """\
examples:
  latbench devices
  latbench devices --json
  latbench devices --show local      # print a profile, e.g. to start your own from it

Profiles are looked up in ./device_profiles, then $LATBENCH_HOME/devices, then the
bundled ones; the first file named DEVICE.yaml wins. To add a board or phone, copy
device_profiles/TEMPLATE-ssh.yaml.txt or TEMPLATE-adb.yaml.txt from the latbench sources
(every field is documented there) to ./device_profiles/NAME.yaml, set `name: NAME`, and run
`latbench doctor --device NAME`."""


def add_parser(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text.capitalize() + ".",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--show", metavar="DEVICE", help="print one profile's YAML file")


def run(args) -> int:
    from latbench.errors import ProfileError
    from latbench.profiles import find_profile, list_profiles, parse_profile

    if args.show:
        path = find_profile(args.show)
        print(path.read_bytes().decode("utf-8", "replace"), end="")  # the note below says what is wrong
        try:  # shown either way (to be fixed or copied), but not silently when it would not load
            parse_profile(path)
        except ProfileError as exc:
            output.note(f"invalid {exc}", style="red")
        return 0
    rows = []
    for name, path in sorted(list_profiles().items()):
        try:
            prof = parse_profile(path)
            rows.append({"name": name, "transport": prof.transport, "runtime": prof.runtime,
                         "format": prof.format, "runner": prof.runner, "threads": prof.threads,
                         "description": prof.description, "path": str(path), "error": None})
        except ProfileError as exc:
            rows.append({"name": name, "transport": None, "runtime": None, "format": None, "runner": None,
                         "threads": None, "description": "", "path": str(path), "error": str(exc)})
    if args.json:
        output.print_json(rows)
        return 0
    cols = ["name", "transport", "runtime", "format", "threads", "description", "path"]
    output.table("device profiles", cols, [[r[c] for c in cols] for r in rows])
    for r in rows:
        if r["error"]:
            output.note(f"invalid {r['error']}", style="red")
    return 0
