"""What every object `predictors.load` returns can do; NAS code relies on exactly this.

- ``predict_ops(specs) -> np.ndarray``: cost of each op (in `unit`);
- ``predict_network(specs_or_space, arch=None) -> float``: a whole network, from its ops
  or from (space, arch), including the network-level correction where there is one;
- ``network_op_costs(specs) -> np.ndarray``: what each op adds to a network it is part of
  (``predict_ops``, but for ops a network does not run: see LatencyPredictor);
- ``cost_table(space) -> np.ndarray`` of shape (space.num_layers, space.num_candidates);
  everywhere, ``space`` is a `latbench.spaces` space or its name (``"fbnet-cifar"``);
- ``fixed_cost(space) -> float``: stem + head conv + avgpool + fc;
- ``correct(total)``: the network-level correction applied to a summed cost (identity
  for analytic costs). For every arch,
  ``predict_network(space, arch) == correct(sum_l cost_table(space)[l, arch[l]] + fixed_cost(space))``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from latbench.ops import Network, OpSpec


class CostModel:
    unit: str = ""

    def predict_ops(self, specs: Sequence[OpSpec]) -> np.ndarray:
        raise NotImplementedError

    def correct(self, total):
        """The summed cost of a network -> its predicted cost (identity unless corrected)."""
        return total

    def _network_ops(self, specs_or_space, arch) -> Sequence[OpSpec]:
        if arch is not None:
            return as_space(specs_or_space).network(arch).ops
        if isinstance(specs_or_space, str):
            raise TypeError("predict_network(space, arch): give the arch of the space")
        if isinstance(specs_or_space, Network):
            return specs_or_space.ops
        if hasattr(specs_or_space, "network"):
            raise TypeError("predict_network(space, arch): give the arch of the space")
        specs = list(specs_or_space)
        if specs and isinstance(specs[0], (int, np.integer)):
            raise TypeError("predict_network got a list of ints: for an arch, give its space too, "
                            "predict_network(space, arch); for ops, give a list of OpSpec")
        return specs

    def network_op_costs(self, specs: Sequence[OpSpec]) -> np.ndarray:
        """What each op adds to a network it is part of; the op's own cost unless a model
        knows better."""
        return self.predict_ops(specs)

    def predict_network(self, specs_or_space, arch: Sequence[int] | None = None) -> float:
        """Cost of a whole network: its ops' `network_op_costs` summed, then `correct`ed."""
        ops = self._network_ops(specs_or_space, arch)
        return float(self.correct(float(np.sum(self.network_op_costs(ops)))))

    def predict_networks(self, space, archs: Sequence[Sequence[int]]) -> np.ndarray:
        """`predict_network` of many archs of one space at once (one table lookup per layer)."""
        space = as_space(space)
        archs = np.asarray([space.check_arch(a) for a in archs], dtype=np.int64).reshape(-1, space.num_layers)
        table = self.cost_table(space)
        totals = table[np.arange(space.num_layers)[None, :], archs].sum(axis=1) + self.fixed_cost(space)
        return np.asarray(self.correct(totals), dtype=np.float64)

    def cost_table(self, space) -> np.ndarray:
        """What candidate c adds at layer l, shape (num_layers, num_candidates), uncorrected."""
        space = as_space(space)
        specs = [space.candidate_op(layer, cand) for layer in range(space.num_layers)
                 for cand in range(space.num_candidates)]
        return np.asarray(self.network_op_costs(specs), dtype=np.float64).reshape(
            space.num_layers, space.num_candidates)

    def fixed_cost(self, space) -> float:
        """Cost of the ops every arch has: stem, head conv, avgpool, fc (uncorrected)."""
        return float(np.sum(self.network_op_costs(list(as_space(space).fixed_ops()))))


def as_space(space):
    """A search space from itself or its name (`latbench.spaces.get_space`)."""
    if isinstance(space, str):
        from latbench.spaces import get_space

        return get_space(space)
    if not hasattr(space, "candidate_op"):
        raise TypeError(f"expected a search space or its name (such as 'fbnet-cifar'); "
                        f"got {type(space).__name__}")
    return space
