"""The search loop on real data (scikit-learn's digits) with real cost models: theta stays
frozen through warm-up, the temperature follows its schedule, and the cost pulls theta
towards cheaper archs, FLOPs and a latency predictor fitted on measured tables alike."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="nas needs torch (pip install -e .)")
pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn (pip install scikit-learn)")

import predictors  # noqa: E402
from conftest import SHARED_DATA  # noqa: E402
from latbench.spaces import get_space  # noqa: E402
from nas.cost import CostForm, load_costs  # noqa: E402
from nas.data import load_data  # noqa: E402
from nas.flow import pick_final  # noqa: E402
from nas.search import SearchConfig, retrain, run_search, supernet_accuracy  # noqa: E402

TINY = {"width_mult": 0.125, "batch_size": 64}


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", 8, seed=0, limit=160)


@pytest.fixture(scope="module")
def space():
    return get_space("fbnet-cifar")


@pytest.fixture(scope="module")
def flops(space):
    return load_costs(["flops"], space)[0]


def test_theta_is_frozen_during_warmup_then_trained(space, digits, flops):
    frozen = run_search(space, digits, [flops.term], CostForm("fbnet"),
                        SearchConfig(epochs=2, warmup_epochs=2, **TINY))
    assert torch.count_nonzero(frozen.supernet.theta) == 0
    assert [r["theta_frozen"] for r in frozen.curves] == [True, True]
    assert all("theta_loss" not in r for r in frozen.curves)

    trained = run_search(space, digits, [flops.term], CostForm("fbnet"),
                         SearchConfig(epochs=3, warmup_epochs=1, **TINY))
    assert [r["theta_frozen"] for r in trained.curves] == [True, False, False]
    assert torch.count_nonzero(trained.supernet.theta) > 0
    assert [r["temperature"] for r in trained.curves] == pytest.approx([5.0, 5.0 * 0.956, 5.0 * 0.956 ** 2])


def test_hinge_over_the_target_lowers_the_expected_flops(space, digits, flops):
    start = flops.term.bounds()
    target = start[0] + 0.1 * (start[1] - start[0])  # far under a uniform theta's cost
    outcome = run_search(space, digits, [flops.term], CostForm("hinge", lam=5.0, targets=(target,)),
                         SearchConfig(epochs=4, warmup_epochs=1, theta_lr=0.1, **TINY))
    costs = [r["expected_cost"]["flops"] for r in outcome.curves]
    assert costs[1] < costs[0] and costs[3] < costs[1]
    assert costs[3] < 0.9 * costs[0]  # three Adam steps of 0.1 on theta


def test_searched_archs_score_and_retrain(space, digits, flops):
    config = SearchConfig(epochs=2, warmup_epochs=1, **TINY)
    outcome = run_search(space, digits, [flops.term], CostForm("fbnet"), config)
    acc = supernet_accuracy(outcome, outcome.arch, digits, config)
    assert 0.0 <= acc <= 1.0
    before = {k: v.clone() for k, v in outcome.supernet.state_dict().items() if "running_mean" in k}
    supernet_accuracy(outcome, (8,) * 22, digits, config)
    after = outcome.supernet.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # scoring leaves BN stats alone
    result = retrain(space, (3,) * 22, digits, SearchConfig(**TINY), epochs=2)
    assert result["epochs"] == 2 and 0.0 <= result["accuracy"] <= 1.0


def test_pick_target_takes_the_likeliest_arch_within_tolerance(flops):
    flops.target = 100.0
    entries = [{"arch": [i], "predicted": {"flops": p}, "log_prob": lp}
               for i, (p, lp) in enumerate([(150.0, -1.0), (95.0, -5.0), (104.0, -3.0), (60.0, -2.0)])]
    argmax, samples = entries[0], entries[1:]
    assert pick_final(argmax, samples, [flops], "argmax", 0.1)["source"] == "argmax"
    chosen = pick_final(argmax, samples, [flops], "target", 0.1)
    assert chosen["source"] == "sample 2" and chosen["within_tolerance"]
    closest = pick_final(argmax, samples, [flops], "target", 0.01)
    assert closest["source"] == "sample 2" and not closest["within_tolerance"]
    flops.target = None


@pytest.fixture
def raspi4_predictor(latbench_home, latbench_cli):
    """A latency predictor fitted on HW-NAS-Bench's Raspberry Pi 4 block table (real measurements)."""
    pytest.importorskip("lightgbm", reason="predictors need LightGBM: pip install -e .[predict]")
    blocks = SHARED_DATA / "fbnet-hwnasbench" / "blocks.csv"
    if not blocks.exists():
        pytest.skip(f"shared data missing: {blocks}")
    done = latbench_cli("import", str(blocks), "--device", "pi", "--source-device", "raspi4")
    assert done.returncode == 0, done.stderr
    done = latbench_cli("fit-predictor", "--device", "pi", "--space", "fbnet-imagenet", "--no-select",
                        "--folds", "3", timeout_s=300)
    if done.returncode != 0 and "matplotlib" in done.stderr:
        pytest.skip("the fit report needs matplotlib (pip install matplotlib)")
    assert done.returncode == 0, done.stderr
    return "latbench:pi"


def test_a_measured_latency_predictor_drives_theta_to_faster_archs(raspi4_predictor):
    space = get_space("fbnet-imagenet")
    cost = load_costs([raspi4_predictor], space)[0]
    assert cost.unit == "ms"
    theta = torch.zeros(space.num_layers, space.num_candidates, requires_grad=True)
    before = cost.term(torch.softmax(theta, -1))
    before.backward()
    with torch.no_grad():
        after = cost.term(torch.softmax(theta - 0.5 * theta.grad / theta.grad.abs().max(), -1))
    assert float(after) < float(before.detach())
    data = load_data("digits", 8, seed=0, limit=160)
    low, high = cost.term.bounds()
    form = CostForm("hinge", lam=5.0, targets=(low + 0.1 * (high - low),))
    config = SearchConfig(epochs=3, warmup_epochs=1, theta_lr=0.1, **TINY)
    outcome = run_search(space, data, [cost.term], form, config)
    ms = [r["expected_cost"][raspi4_predictor] for r in outcome.curves]
    assert ms[2] < ms[0]
    arch = outcome.arch
    want = predictors.load(raspi4_predictor).predict_network(space, arch)
    assert cost.predict(space, arch) == pytest.approx(want)
