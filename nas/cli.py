"""Entry point of `nas`. Turns the project's errors into one line and an exit code, like `latbench`."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from latbench import __version__
from latbench.cli import exit_codes
from latbench.cli.arguments import int_at_least

EXAMPLES = """\
examples:
  nas search --cost latbench:pixel3                       # FBNet loss, the device's latency predictor
  nas search --cost latbench:local --form hinge --target-ms 0.92 --pick budget --width-mult 0.25 \\
      --input-size 8 --epochs 8 --theta-lr 0.1 --verify  # minutes on a CPU, as scripts/run-local.sh
                                                    # (which sets the target from this host's predictor)
  nas search --cost flops --form hinge --target-flops 150M --epochs 5 --width-mult 0.25 --input-size 8
  nas search --cost latbench:pixel3 --cost latbench:rpi4 --form hinge --target-ms 20 --target-ms 90
  nas search --cost latbench:local --form hinge --target-ms 1.2 --data cifar10:./cifar-10-batches-bin \\
      --torch-device cuda                           # full width at 32x32: give it a GPU
  torchrun --standalone --nproc-per-node 4 -m nas search --cost latbench:pixel3 --torch-device cuda

Under torchrun the search is data-parallel (DistributedDataParallel: NCCL on GPUs, one per
process; gloo on CPUs): each --batch-size batch is split between the processes, and rank 0
alone scores, exports, verifies and writes the result files.

Costs: latbench:DEVICE (a fitted latency predictor, see `latbench fit-predictor`), flops, params.
The cost term is the expected cost under theta's candidate probabilities, in the units of
the predictor's whole-network prediction (its network-level correction included).
Forms: fbnet    CE * alpha * log(cost) ** beta      (needs costs above 1: ms on phones, FLOPs)
       linear   CE + lambda * (cost - target) / target
       hinge    CE + lambda * max(cost / target - 1, 0)
Several --cost add their terms (fbnet: CE * alpha * sum of log(cost) ** beta); targets are
per unit: give one for all costs of that unit, or one per cost in --cost order.

The final arch is theta's argmax, or, when a target is given (--pick auto), the most likely
of the argmax and the --samples draws whose predicted cost is within --tolerance of it (up to
that much over it, too; --pick budget: at or under it).
--width-mult and --input-size shrink only the trained supernet (for speed on a small CPU,
e.g. --width-mult 0.25 --input-size 8 with the 8x8 digits: the defaults, full width at the
space's 32 or 224 px, take some 45 minutes for 10 epochs of digits on a 2-core CPU); costs,
predictions, exports and --verify always use the full-width network of the space.
Writes OUT/result.json (archs, predictions, accuracy, curves; the settings, library versions and
each cost's predictor folder and manifest sha256, to repeat the search) and OUT/arch.onnx,
OUT/arch.tflite."""

_SUFFIXES = {"k": 1e3, "m": 1e6, "g": 1e9}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like latbench
        self.exit(exit_codes.USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _amount(text: str) -> float:
    """A finite positive number, optionally with k, M or G: 150M, 1.2G, 3e8 (inf would make a
    linear cost term NaN and train theta to NaN)."""
    t = text.strip()
    scale = _SUFFIXES.get(t[-1:].lower(), 1.0)
    if scale != 1.0:
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (e.g. 1.5, 3e8, 150M, 1.2G)") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return value


def _fraction_or_one(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nas", description="Hardware-aware neural architecture search with latbench costs.",
                     epilog="Example: nas search --cost latbench:local --form hinge --target-ms 0.92 "
                            "--pick budget --width-mult 0.25 --input-size 8 --verify\n"
                            "(a CPU-sized run, as scripts/run-local.sh; put a target in your predictor's range; "
                            "more in `nas search --help`)",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"nas (latbench) {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    help_text = "FBNet-style differentiable search with latbench predictors as cost terms"
    p = sub.add_parser("search", help=help_text, description="FBNet-style differentiable architecture search "
                       "(DNAS) with latbench predictors as cost terms.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c = p.add_argument_group("cost")
    c.add_argument("--cost", action="append", required=True, metavar="SPEC",
                   help="latbench:DEVICE, flops or params; repeat for several devices")
    c.add_argument("--form", choices=["fbnet", "linear", "hinge"], default="fbnet",
                   help="how CE and cost combine (default fbnet)")
    # alpha, beta, lambda and tolerance default to None, so the search can tell what was given and
    # say so when a given one has no effect (the values are filled in by nas.flow).
    c.add_argument("--alpha", type=_nonneg_float, default=None, help="fbnet form: alpha (default 0.2)")
    c.add_argument("--beta", type=_nonneg_float, default=None, help="fbnet form: beta (default 0.6)")
    c.add_argument("--lambda", dest="lam", type=_nonneg_float, default=None,
                   help="linear/hinge forms: weight of the cost term (default 1.0)")
    c.add_argument("--target-ms", type=_amount, action="append", default=[], metavar="MS",
                   help="latency target of latbench:DEVICE costs: hinge trains toward it (no push once "
                        "under it), linear divides the cost by it (the same push on either side); "
                        "with fbnet it only picks the final arch")
    c.add_argument("--target-flops", type=_amount, action="append", default=[], metavar="N",
                   help="FLOPs target of the flops cost, e.g. 150M")
    c.add_argument("--target-params", type=_amount, action="append", default=[], metavar="N",
                   help="parameter target of the params cost, e.g. 2M")
    d = p.add_argument_group("data and supernet")
    d.add_argument("--space", default="fbnet-cifar", help="fbnet-cifar (default) or fbnet-imagenet")
    d.add_argument("--data", default="digits",
                   help="digits (scikit-learn's, default), imagefolder:PATH or cifar10:PATH (binary release)")
    d.add_argument("--input-size", type=int_at_least(4), default=None, metavar="PX",
                   help="train at this input size (default: the space's, 32 or 224)")
    d.add_argument("--width-mult", type=_amount, default=1.0, metavar="X",
                   help="channel scale of the trained supernet only (default 1.0)")
    d.add_argument("--limit-train", type=int_at_least(2), default=None, metavar="N",
                   help="use only N training images (a quick run)")
    d.add_argument("--weight-split", type=_fraction, default=0.8, metavar="F",
                   help="share of training images for the weights; the rest trains theta (default 0.8)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int_at_least(1), default=10, help="search epochs (default 10)")
    t.add_argument("--warmup-epochs", type=int_at_least(0), default=2,
                   help="epochs with theta frozen, weights only (default 2; --epochs must be more)")
    t.add_argument("--batch-size", type=int_at_least(2), default=64,
                   help="images per step, split between torchrun's processes: at least 2 each, "
                        "for BatchNorm (default 64)")
    t.add_argument("--lr", type=_nonneg_float, default=0.1,
                   help="SGD learning rate of the weights (default 0.1, cosine)")
    t.add_argument("--momentum", type=_nonneg_float, default=0.9, help="SGD momentum (default 0.9)")
    t.add_argument("--weight-decay", type=_nonneg_float, default=1e-4, help="SGD weight decay (default 1e-4)")
    t.add_argument("--theta-lr", type=_nonneg_float, default=0.01, help="Adam learning rate of theta (default 0.01)")
    t.add_argument("--theta-weight-decay", type=_nonneg_float, default=5e-4, help="Adam weight decay (default 5e-4)")
    t.add_argument("--temperature", type=_amount, default=5.0,
                   help="initial Gumbel-softmax temperature (default 5.0)")
    t.add_argument("--temperature-decay", type=_fraction_or_one, default=0.956,
                   help="temperature factor per epoch (default 0.956)")
    t.add_argument("--seed", type=int_at_least(0), default=0, help="default 0")
    t.add_argument("--torch-device", default="cpu", help="cpu (default), cuda or cuda:N")
    t.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads (default: torch's)")
    o = p.add_argument_group("result")
    o.add_argument("--samples", type=int_at_least(0), default=10, metavar="K",
                   help="also score K archs drawn from theta (default 10)")
    o.add_argument("--pick", choices=["auto", "argmax", "target", "budget"], default="auto",
                   help="final arch: theta's argmax, or (target) the most likely of argmax and the K "
                        "draws whose predicted cost is within --tolerance of the targets, or (budget) "
                        "the same at or under every target, a hard budget (else the closest under; "
                        "none under: the least over); auto (default): target when a target is given, "
                        "else argmax")
    o.add_argument("--tolerance", type=_fraction, default=None, metavar="F",
                   help="--pick target: allowed relative miss of each target, as predicted (default 0.05, "
                        "which leaves the rest of a +-10%% band for the predictor's own error)")
    o.add_argument("--retrain-epochs", type=int_at_least(0), default=5, metavar="N",
                   help="train the final arch alone for N epochs and report its held-out accuracy "
                        "(default 5; 0: off)")
    o.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="result folder (default: nas-results/SPACE-TIME)")
    o.add_argument("--no-export", action="store_true", help="do not write ONNX/TFLite files")
    o.add_argument("--verify", action="store_true",
                   help="measure the found network on the cost's device and print measured vs predicted")
    o.add_argument("--verify-device", metavar="NAME", help="device for --verify (default: each latbench cost's)")
    o.add_argument("--verify-wait-s", type=_nonneg_float, default=None, metavar="S",
                   help="--verify: how long to wait for a collection that measures the device when the "
                        "search ends (default 600); the result is written either way")
    o.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return exit_codes.USAGE
    from latbench.cli.main import guarded

    def call() -> int:
        from nas.command import run

        return run(args)

    return guarded("nas", call, debug=args.debug,
                   cancelled="nothing was written for the unfinished search")


if __name__ == "__main__":
    sys.exit(main())
