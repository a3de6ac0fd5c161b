"""Cost terms and cost forms: the expected cost is differentiable, its gradient reaches theta
with the sign that lowers cost, and each form computes what its formula says."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="nas needs torch (pip install -e .)")

import predictors  # noqa: E402
from latbench.spaces import get_space  # noqa: E402
from nas.cost import CostForm, assign_targets, load_costs  # noqa: E402
from predictors.cost_term import CostTerm, expected_cost  # noqa: E402


@pytest.fixture(scope="module")
def space():
    return get_space("fbnet-cifar")


@pytest.fixture(scope="module")
def flops_term(space) -> CostTerm:
    return CostTerm.from_predictor(predictors.load("flops"), space, "flops")


def test_predictors_imports_without_loading_the_torch_cost_term():
    code = ("import sys, predictors; predictors.load('flops'); "
            "assert 'predictors.cost_term' not in sys.modules; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_hot_probabilities_give_the_predictors_network_cost(space, flops_term):
    model = predictors.load("flops")
    arch = (0, 8, 3, 7, 1, 2, 4, 5, 6, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2)
    probs = torch.nn.functional.one_hot(torch.tensor(arch), space.num_candidates).float()
    cost = float(flops_term(probs))
    assert cost == pytest.approx(space.network(arch).flops, rel=1e-6)
    assert cost == pytest.approx(model.predict_network(space, arch), rel=1e-6)
    assert flops_term.of_arch(arch) == pytest.approx(space.network(arch).flops, rel=1e-9)


def test_expected_cost_is_the_probability_weighted_table_plus_fixed(space, flops_term):
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(space.num_layers, space.num_candidates, generator=gen), -1)
    table = predictors.load("flops").cost_table(space)
    want = float((probs.double().numpy() * table).sum()) + predictors.load("flops").fixed_cost(space)
    assert float(flops_term(probs)) == pytest.approx(want, rel=1e-5)
    per_sample = flops_term(probs.expand(3, -1, -1))  # a batch of mixtures -> one cost each
    assert per_sample.shape == (3,)
    assert torch.allclose(per_sample, flops_term(probs).expand(3))


def test_gradient_reaches_theta_and_a_descent_step_lowers_the_cost(space, flops_term):
    theta = torch.zeros(space.num_layers, space.num_candidates, requires_grad=True)
    cost = flops_term(torch.softmax(theta, -1))
    cost.backward()
    grad = theta.grad
    assert grad is not None and bool(grad.abs().sum() > 0)
    # Within a layer the gradient is p_c * (cost_c - mean cost): dearer candidates are pushed down.
    table = flops_term.table
    for layer in range(space.num_layers):
        dear, cheap = int(table[layer].argmax()), int(table[layer].argmin())
        assert grad[layer, dear] > 0 > grad[layer, cheap]
    with torch.no_grad():
        stepped = theta - 0.5 * grad / grad.abs().max()
    assert float(flops_term(torch.softmax(stepped, -1))) < float(cost.detach())


def test_a_correction_fitted_on_large_networks_keeps_the_smallest_above_zero(space):
    """Networks measured at 1.3 x their op sum minus an offset that, applied affinely, would take
    the all-skip network under 0 ms: the term, predict_network and the bounds agree, and stay > 0."""
    pytest.importorskip("lightgbm", reason="predictors need LightGBM: pip install -e . (a latbench dependency)")
    from conftest import SHARED_DATA
    from latbench.importers import read_hwnasbench
    from latbench.ops import OpSpec
    from predictors.latency import LatencyPredictor

    blocks = SHARED_DATA / "fbnet-hwnasbench" / "blocks.csv"
    if not blocks.exists():
        pytest.skip(f"shared data missing: {blocks}")
    rows = read_hwnasbench(blocks, "raspi4").rows
    specs, y = [OpSpec.from_key(r["key"]) for r in rows], np.array([r["median_ms"] for r in rows])
    plain = LatencyPredictor().fit(specs, y)
    rng = np.random.default_rng(0)
    archs = [tuple(int(c) for c in a) for a in rng.integers(0, 8, size=(12, space.num_layers))]  # no skips
    sums = np.array([plain.predict_network(space, a) for a in archs])
    skips = (8,) * space.num_layers
    offset = 1.3 * 0.5 * (plain.predict_network(space, skips) + sums.min())
    model = LatencyPredictor(correction="affine").fit(specs, y, networks=[space.network(a) for a in archs],
                                                      network_ms=1.3 * sums - offset)
    scale, got_offset, low_ms = model.correction_parts
    assert got_offset < 0 and low_ms == pytest.approx(sums.min())
    assert scale * plain.predict_network(space, skips) + got_offset < 0  # what affine would say
    term = CostTerm.from_predictor(model, space, "raspi4")
    for arch in [skips, archs[0], tuple(int(c) for c in rng.integers(0, 9, size=space.num_layers))]:
        want = model.predict_network(space, arch)
        assert want > 0
        probs = torch.nn.functional.one_hot(torch.tensor(arch), space.num_candidates).double()
        assert term.of_arch(arch) == pytest.approx(want, rel=1e-9)
        assert float(term(probs)) == pytest.approx(want, rel=1e-5)
    assert term.bounds()[0] == pytest.approx(model.predict_network(space, skips), rel=1e-9) and term.bounds()[0] > 0
    theta = torch.zeros(space.num_layers, space.num_candidates, requires_grad=True)
    term(torch.softmax(theta, dim=-1)).backward()
    assert torch.all(torch.isfinite(theta.grad)) and theta.grad.abs().sum() > 0


def test_cost_term_rejects_a_table_of_the_wrong_shape(space):
    class Wrong:
        unit = "ms"

        def cost_table(self, space):
            return np.ones((3, 3))

        def fixed_cost(self, space):
            return 0.0

    with pytest.raises(ValueError, match="shape"):
        CostTerm.from_predictor(Wrong(), space, "wrong")
    with pytest.raises(ValueError, match="probs must be"):
        expected_cost(torch.ones(4, 9), torch.ones(22, 9))


def test_fbnet_form_takes_log_cost_to_the_beta_not_log_of_cost_to_the_beta():
    form = CostForm("fbnet", alpha=0.2, beta=0.6)
    ce, cost = torch.tensor(1.7), torch.tensor(100.0)
    got = float(form.loss(ce, [cost]))
    assert got == pytest.approx(1.7 * 0.2 * math.log(100.0) ** 0.6, rel=1e-6)
    wrong = 1.7 * 0.2 * math.log(100.0 ** 0.6)
    assert abs(got - wrong) > 0.05 * wrong  # 0.869 vs 0.940: the two readings are far apart


def test_linear_and_hinge_forms():
    ce = torch.tensor(2.0)
    linear = CostForm("linear", lam=0.5, targets=(10.0,))
    assert float(linear.loss(ce, [torch.tensor(12.0)])) == pytest.approx(2.0 + 0.5 * 0.2)
    assert float(linear.loss(ce, [torch.tensor(8.0)])) == pytest.approx(2.0 - 0.5 * 0.2)
    hinge = CostForm("hinge", lam=0.5, targets=(10.0,))
    assert float(hinge.loss(ce, [torch.tensor(12.0)])) == pytest.approx(2.0 + 0.5 * 0.2)
    below = torch.tensor(8.0, requires_grad=True)
    loss = hinge.loss(ce, [below])
    loss.backward()
    assert float(loss.detach()) == pytest.approx(2.0) and float(below.grad) == 0.0  # no pull under the target


def test_several_costs_add_their_terms():
    ce = torch.tensor(1.0)
    costs = [torch.tensor(20.0), torch.tensor(5.0)]
    hinge = CostForm("hinge", lam=1.0, targets=(10.0, 10.0))
    assert float(hinge.loss(ce, costs)) == pytest.approx(1.0 + 1.0 + 0.0)
    fbnet = CostForm("fbnet")
    want = 0.2 * (math.log(20.0) ** 0.6 + math.log(5.0) ** 0.6)
    assert float(fbnet.loss(ce, costs)) == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="one target per cost"):
        CostForm("hinge", targets=(10.0,)).loss(ce, costs)


def test_bad_form_settings_are_named():
    with pytest.raises(ValueError, match="'form' parameter of CostForm"):
        CostForm("exp")
    with pytest.raises(ValueError, match="'alpha' parameter"):
        CostForm("fbnet", alpha=-1)
    with pytest.raises(ValueError, match="targets must be finite and > 0"):
        CostForm("hinge", targets=(0.0,))
    with pytest.raises(ValueError, match="targets must be finite and > 0"):
        CostForm("linear", targets=(float("inf"),))  # (cost - inf) / inf is NaN


def test_targets_one_for_all_or_one_per_cost(space):
    costs = load_costs(["flops", "params"], space)
    assign_targets(costs, {"flops": [1e8], "params": [2e6], "ms": []})
    assert [c.target for c in costs] == [1e8, 2e6]
    with pytest.raises(ValueError, match="--target-ms was given but no --cost is in ms"):
        assign_targets(costs, {"ms": [5.0]})
    with pytest.raises(ValueError, match="given 2 times for 1 cost"):
        assign_targets(costs, {"flops": [1e8, 2e8]})
    with pytest.raises(ValueError, match="given twice"):
        load_costs(["flops", "flops"], space)


@pytest.mark.slow
def test_the_cost_term_carries_the_predictors_network_correction(warm_home, fast_profile, latbench_cli, space):
    """Ops and two whole networks measured here, fitted with a scale correction: the cost term
    is in the predictor's corrected milliseconds, so a --target-ms means the same to both."""
    pytest.importorskip("lightgbm", reason="predictors need LightGBM: pip install -e . (a latbench dependency)")
    pytest.importorskip("matplotlib", reason="the fit report draws a PNG: pip install matplotlib")
    from conftest import CACHED_NETWORKS, CACHED_OPS

    done = latbench_cli("collect", "--device", fast_profile, "--limit", str(CACHED_OPS),
                        "--networks", str(CACHED_NETWORKS), timeout_s=600)
    assert done.returncode == 0, done.stderr
    done = latbench_cli("fit-predictor", "--device", fast_profile, "--no-select", "--folds", "4",
                        "--correction", "scale", timeout_s=600)
    assert done.returncode == 0, done.stderr
    model = predictors.load(f"latbench:{fast_profile}")
    term = CostTerm.from_predictor(model, space, "local")
    assert term.unit == "ms" and term.scale != 1.0
    rng = np.random.default_rng(0)
    for arch in rng.integers(0, space.num_candidates, size=(5, space.num_layers)):
        one_hot = torch.nn.functional.one_hot(torch.as_tensor(arch), space.num_candidates).double()
        want = model.predict_network(space, tuple(int(c) for c in arch))
        assert term.of_arch(arch) == pytest.approx(want, rel=1e-6)
        assert float(term(one_hot)) == pytest.approx(want, rel=1e-5)
    uniform = torch.full((space.num_layers, space.num_candidates), 1.0 / space.num_candidates)
    summed = float((model.cost_table(space) / space.num_candidates).sum()) + model.fixed_cost(space)
    assert float(term(uniform)) == pytest.approx(float(model.correct(summed)), rel=1e-5)
