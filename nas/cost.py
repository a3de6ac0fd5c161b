"""How the cross-entropy and the expected costs combine into the architecture loss.

Forms (one cost):
  fbnet   CE * alpha * log(cost) ** beta              (Wu et al., FBNet, CVPR 2019)
  linear  CE + lambda * (cost - target) / target
  hinge   CE + lambda * max(cost / target - 1, 0)

Several costs (`--cost` repeated, e.g. two devices) add their terms: fbnet multiplies
CE by alpha * sum_d log(cost_d) ** beta; linear and hinge add lambda * term_d for each
cost d, each against its own target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

FORMS = ("fbnet", "linear", "hinge")


@dataclass(frozen=True)
class CostForm:
    """One of FORMS with its constants; `targets` holds one target per cost (linear, hinge)."""

    form: str = "fbnet"
    alpha: float = 0.2
    beta: float = 0.6
    lam: float = 1.0
    targets: tuple[float, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"The 'form' parameter of CostForm must be one of {', '.join(FORMS)}. "
                             f"Got {self.form!r}.")
        for name in ("alpha", "beta", "lam"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"The {name!r} parameter of CostForm must be a number >= 0. "
                                 f"Got {getattr(self, name)!r}.")
        if self.form == "fbnet" and self.alpha == 0:  # CE * 0: theta would get no gradient at all
            raise ValueError("--alpha 0 makes the fbnet loss 0, so the architecture never learns; "
                             "for a search without the cost term use --beta 0 (CE * alpha)")
        if any(not (t > 0 and math.isfinite(t)) for t in self.targets):  # inf: linear's term is NaN
            raise ValueError(f"cost targets must be finite and > 0; got {list(self.targets)}")

    @property
    def needs_target(self) -> bool:
        return self.form in ("linear", "hinge")

    def penalty(self, costs: list[torch.Tensor]) -> torch.Tensor:
        """The cost part alone: the factor on CE (fbnet) or the added term (linear, hinge)."""
        if self.form == "fbnet":
            # log(cost) ** beta, not log(cost ** beta) = beta * log(cost): the power damps
            # the log, which is what makes the FBNet trade-off sub-linear in cost.
            return self.alpha * sum(torch.log(c) ** self.beta for c in costs)
        if len(self.targets) != len(costs):
            raise ValueError(f"the {self.form} form needs one target per cost: "
                             f"{len(costs)} cost(s), {len(self.targets)} target(s)")
        if self.form == "linear":
            terms = [(c - t) / t for c, t in zip(costs, self.targets)]
        else:
            terms = [torch.relu(c / t - 1.0) for c, t in zip(costs, self.targets)]
        return self.lam * sum(terms)

    def loss(self, ce: torch.Tensor, costs: list[torch.Tensor]) -> torch.Tensor:
        """The architecture loss for cross-entropy `ce` and expected costs `costs` (same order as targets)."""
        if not costs:
            return ce
        penalty = self.penalty(costs)
        return ce * penalty if self.form == "fbnet" else ce + penalty


# ---- cost specs -> cost terms ------------------------------------------------------------

#: The unit of a cost -> the option that sets its targets.
TARGET_OPTIONS = {"ms": "--target-ms", "flops": "--target-flops", "params": "--target-params"}


#: What a result records of a fitted predictor (see predictors.artifact.load's info_).
PROVENANCE_KEYS = ("folder", "manifest_sha256", "device", "unit", "created_at", "space", "table", "runtime",
                   "runtime_version", "settings_hash", "ops", "networks", "versions")


@dataclass
class LoadedCost:
    """One `--cost` spec: the predictor behind it, its cost term, and its target (if any)."""

    spec: str
    model: object  # what predictors.load returned: cost_table, fixed_cost, predict_network, unit
    term: object  # predictors.cost_term.CostTerm
    target: float | None = None

    @property
    def unit(self) -> str:
        return self.model.unit

    @property
    def device(self) -> str | None:
        """The latbench device of a latency cost, else None."""
        kind, _, name = self.spec.partition(":")
        return name if kind == "latbench" and name else None

    def predict(self, space, arch) -> float:
        """The full predictor's value for `arch` (with its network-level correction)."""
        return float(self.model.predict_network(space, tuple(arch)))

    def provenance(self) -> dict | None:
        """Which fitted predictor this is (None for analytic costs), so a result names it: a
        refit replaces `latbench:DEVICE`'s folder, and with it every prediction."""
        info = getattr(self.model, "info_", None)
        if not info:
            return None
        return {k: info.get(k) for k in PROVENANCE_KEYS}

    def to_dict(self) -> dict:
        low, high = self.term.bounds()
        correction = {"scale": self.term.scale, "offset": self.term.offset, "low_ms": self.term.low_ms}
        return {"spec": self.spec, "unit": self.unit, "target": self.target, "min": low, "max": high,
                "fixed": self.term.fixed, "correction": correction, "predictor": self.provenance()}


def load_costs(specs: list[str], space, loader=None) -> list[LoadedCost]:
    """Resolve cost specs with `predictors.load` (or `loader`) into cost terms of `space`."""
    from predictors.cost_term import CostTerm

    if loader is None:
        import predictors

        loader = predictors.load
    if len(set(specs)) != len(specs):
        raise ValueError(f"a cost spec is given twice: {specs}")
    out = []
    for spec in specs:
        model = loader(spec)
        out.append(LoadedCost(spec, model, CostTerm.from_predictor(model, space, spec)))
    return out


def assign_targets(costs: list[LoadedCost], targets: dict[str, list[float]]) -> None:
    """Give each cost its target from `targets` (unit -> values from the command line).

    Per unit: one value applies to every cost of that unit; otherwise one value per cost,
    in the order the costs were given. Raises ValueError naming the option when they do not fit.
    """
    for unit, values in targets.items():
        mine = [c for c in costs if c.unit == unit]
        option = TARGET_OPTIONS.get(unit, f"--target for {unit}")
        if values and not mine:
            raise ValueError(f"{option} was given but no --cost is in {unit} (costs given: "
                             f"{', '.join(c.spec for c in costs)}); add --cost "
                             f"{'latbench:DEVICE' if unit == 'ms' else unit} or drop {option}")
        if len(values) == 1:
            for c in mine:
                c.target = values[0]
        elif len(values) == len(mine):
            for c, v in zip(mine, values):
                c.target = v
        elif values:
            raise ValueError(f"{option} was given {len(values)} times for {len(mine)} cost(s) in {unit}: "
                             f"give it once (for all) or once per cost, in --cost order")
