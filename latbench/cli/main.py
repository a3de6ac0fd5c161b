"""Entry point of `latbench`. Turns the project's errors into one line and an exit code."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from latbench import __version__
from latbench.cli import exit_codes
from latbench.errors import LatbenchError

#: subcommand -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "collect": ("latbench.cli.collect", "measure the ops (and networks) of a search space on a device"),
    "lut": ("latbench.cli.lut", "print or write a device's measured latency table"),
    "devices": ("latbench.cli.devices", "list the known device profiles"),
    "fit-predictor": ("latbench.cli.fit_predictor", "fit and save a device's latency predictor (LUT + GBDT)"),
    "import": ("latbench.cli.import_cmd", "import latencies measured elsewhere (CSV, HW-NAS-Bench, HELP)"),
    "doctor": ("latbench.cli.doctor", "check that a device can be measured, with a fix for each problem"),
    "farm": ("latbench.cli.farm", "run a device farm on Ray: host agents, and the farm's status"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every usage error here
        self.exit(exit_codes.USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="latbench",
        description="Measure operator and network latency on real devices, for hardware-aware NAS.",
        epilog="Example: latbench collect --device local --space fbnet-cifar",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"latbench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    argv = sys.argv[1:]
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        if chosen == name:
            importlib.import_module(module).add_parser(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args()
    if not args.command:
        parser.print_help()
        return exit_codes.USAGE
    return guarded("latbench", lambda: importlib.import_module(COMMANDS[args.command][0]).run(args),
                   debug=args.debug, cancelled="everything finished before Ctrl-C is kept")


#: Modules of latbench's dependencies (pyproject.toml) -> the package that installs each.
DEPENDENCY_PACKAGES = {
    "torch": "torch", "onnx": "onnx", "onnxruntime": "onnxruntime", "numpy": "numpy", "yaml": "PyYAML",
    "rich": "rich", "lightgbm": "lightgbm", "scipy": "scipy", "matplotlib": "matplotlib",
    "paramiko": "paramiko", "adb_shell": "adb-shell", "sklearn": "scikit-learn", "PIL": "Pillow",
}


def missing_dependency(exc: ModuleNotFoundError) -> str | None:
    """The line for a dependency that is not installed in this Python; None for other modules."""
    package = DEPENDENCY_PACKAGES.get((exc.name or "").split(".")[0])
    if package is None:
        return None
    return (f"latbench needs {package}, which this Python ({sys.executable}) does not have "
            f"(no module {exc.name!r}): install latbench's dependencies with scripts/setup.sh, or "
            f"pip install -e . in this environment")


def guarded(prog: str, call, *, debug: bool, cancelled: str) -> int:
    """Run `call` and turn what it raises into one line on stderr and an exit code
    (the traceback only with --debug or LATBENCH_DEBUG). Shared by `latbench` and `nas`."""
    debug = debug or bool(os.environ.get("LATBENCH_DEBUG"))
    try:
        return call() or exit_codes.SUCCESS
    except LatbenchError as exc:
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: cancelled; {cancelled}\n")
        return exit_codes.CANCELLED
    except BrokenPipeError:
        return exit_codes.SUCCESS
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            raise
        if isinstance(exc, ModuleNotFoundError) and (line := missing_dependency(exc)):
            sys.stderr.write(f"{prog}: error: {line}\n")  # not a bug: an environment without it
            return exit_codes.ERROR
        sys.stderr.write(f"{prog}: internal error: {type(exc).__name__}: {exc} "
                         f"(re-run with LATBENCH_DEBUG=1 for the traceback, and please report it)\n")
        return exit_codes.ERROR


if __name__ == "__main__":
    sys.exit(main())
