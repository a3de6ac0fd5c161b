"""The search loop on real data (scikit-learn's digits) with real cost models: theta stays
frozen through warm-up, the temperature follows its schedule, and the cost pulls theta
towards cheaper archs, FLOPs and a latency predictor fitted on measured tables alike."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="nas needs torch (pip install -e .)")
pytest.importorskip("sklearn", reason="the digits data ships with scikit-learn (pip install scikit-learn)")

import predictors  # noqa: E402
from conftest import SHARED_DATA  # noqa: E402
from latbench.errors import UsageError  # noqa: E402
from latbench.spaces import get_space  # noqa: E402
from nas.cost import CostForm, load_costs  # noqa: E402
from nas.data import load_data  # noqa: E402
from nas.flow import SearchJob, advice, pick_final, prepare, target_report  # noqa: E402
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


def test_a_batch_that_leaves_a_process_one_image_is_refused_before_training(space, digits, flops):
    # BatchNorm needs 2 images per process: such a batch is dropped, so nothing would train
    with pytest.raises(ValueError, match="'batch_size' parameter of SearchConfig must be an int >= 2"):
        SearchConfig(batch_size=1)
    from nas.distributed import World

    with pytest.raises(UsageError, match="--batch-size 3 leaves each of the 2 process"):
        run_search(space, digits, [flops.term], CostForm("fbnet"),
                   SearchConfig(epochs=1, warmup_epochs=0, width_mult=0.125, batch_size=3),
                   world=World(rank=0, world_size=2))


def _scored(predicted_and_log_prob: list[tuple[float, float]]) -> list[dict]:
    """Scored archs as `score_candidates` gives them: (predicted flops, log P(arch)) each."""
    return [{"arch": [i], "predicted": {"flops": p}, "log_prob": lp}
            for i, (p, lp) in enumerate(predicted_and_log_prob)]


def test_pick_target_takes_the_likeliest_arch_within_tolerance(flops):
    flops.target = 100.0
    entries = _scored([(150.0, -1.0), (95.0, -5.0), (104.0, -3.0), (60.0, -2.0)])
    argmax, samples = entries[0], entries[1:]
    assert pick_final(argmax, samples, [flops], "argmax", 0.1)["source"] == "argmax"
    chosen = pick_final(argmax, samples, [flops], "target", 0.1)
    assert chosen["source"] == "sample 2" and chosen["within_tolerance"]
    closest = pick_final(argmax, samples, [flops], "target", 0.01)
    assert closest["source"] == "sample 2" and not closest["within_tolerance"]
    flops.target = None


def test_pick_budget_takes_the_likeliest_arch_at_or_under_every_target(flops):
    """--pick target takes 104 for a target of 100 (4% over, within +-10%); a budget does not."""
    flops.target = 100.0
    entries = _scored([(150.0, -1.0), (95.0, -5.0), (104.0, -3.0), (60.0, -4.0)])
    argmax, samples = entries[0], entries[1:]
    assert pick_final(argmax, samples, [flops], "target", 0.1)["source"] == "sample 2"
    chosen = pick_final(argmax, samples, [flops], "budget", 0.1)
    assert chosen["source"] == "sample 1" and chosen["within_tolerance"]  # 95: under, within 10%
    closest_under = pick_final(argmax, samples, [flops], "budget", 0.01)
    assert closest_under["source"] == "sample 1" and not closest_under["within_tolerance"]
    assert closest_under["under_budget"]  # 95, not the likelier 60: far under wastes the budget
    least_over = pick_final(argmax, [entries[2]], [flops], "budget", 0.1)
    assert least_over["source"] == "sample 1" and not least_over["under_budget"]
    (over,) = target_report({"predicted": {"flops": 104.0}}, [flops], 0.05, budget=True)
    assert not over["hit"] and over["budget"]
    (under,) = target_report({"predicted": {"flops": 97.0}}, [flops], 0.05, budget=True)
    assert under["hit"]
    flops.target = None
    with pytest.raises(UsageError, match="--pick budget needs a target"):
        prepare(SearchJob(costs=["flops"], form="fbnet", pick="budget"))


def _advice(**job) -> list[str]:
    job = SearchJob(costs=["flops"], **job)
    _, costs, _, pick = prepare(job)
    return advice(job, costs, pick)


@pytest.mark.parametrize("job, words", [
    ({"form": "hinge", "targets": {"flops": [1e6]}},
     "warning: --target-flops 1M is below the cheapest network: flops ranges over 22.7M..321.9M flops"),
    ({"form": "hinge", "targets": {"flops": [1e9]}}, "warning: --target-flops 1000M is above the dearest network"),
    ({"targets": {"flops": [80e6]}}, "note: --target-flops does not enter the fbnet loss, it only picks"),
    ({"form": "hinge", "targets": {"flops": [80e6]}, "alpha": 0.3}, "note: --alpha has no effect with --form hinge"),
    ({"form": "linear", "targets": {"flops": [80e6]}, "beta": 0.5}, "note: --beta has no effect with --form linear"),
    ({"lam": 2.0}, "note: --lambda has no effect with --form fbnet"),
    ({"tolerance": 0.1}, "note: --tolerance does not choose the final arch with --pick argmax and no target"),
    ({"form": "hinge", "targets": {"flops": [80e6]}, "pick": "argmax", "tolerance": 0.1},
     "it only judges whether the targets were hit"),
])
def test_flags_without_effect_and_unreachable_targets_are_said_before_training(job, words):
    lines = _advice(**job)
    assert len(lines) == 1 and words in lines[0], lines


def test_flags_that_take_effect_say_nothing():
    assert _advice() == []
    assert _advice(form="hinge", targets={"flops": [80e6]}, lam=2.0, tolerance=0.1) == []
    assert _advice(alpha=0.3, beta=0.5) == []
    # the defaults are filled in when none is given
    job = SearchJob(costs=["flops"], form="fbnet")
    assert prepare(job)[2].alpha == 0.2 and prepare(job)[2].lam == 1.0


def test_target_report_says_hit_or_by_how_much_it_missed(flops):
    flops.target = 100.0
    (over,) = target_report({"predicted": {"flops": 150.0}}, [flops], 0.05)
    assert over["relative_miss"] == pytest.approx(0.5) and not over["hit"]
    (near,) = target_report({"predicted": {"flops": 96.0}}, [flops], 0.05)
    assert near["relative_miss"] == pytest.approx(-0.04) and near["hit"]
    flops.target = None
    assert target_report({"predicted": {"flops": 96.0}}, [flops], 0.05) == []


@pytest.fixture
def raspi4_predictor(latbench_home, latbench_cli):
    """A latency predictor fitted on HW-NAS-Bench's Raspberry Pi 4 block table (real measurements)."""
    pytest.importorskip("lightgbm", reason="predictors need LightGBM: pip install -e . (a latbench dependency)")
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


def test_a_predictor_fitted_under_other_settings_than_the_profile_has_now_is_warned(fast_profile):
    from types import SimpleNamespace

    from latbench.profiles import DeviceProfile
    from latbench.store import profile_settings
    from nas.cost import LoadedCost

    def cost(settings):
        model = SimpleNamespace(info_={"settings_hash": DeviceProfile.settings_hash(settings), "table": "0c4eaba1",
                                       "settings": settings}, unit="ms")
        return LoadedCost(spec=f"latbench:{fast_profile}", model=model, term=None)

    job = SearchJob(costs=[f"latbench:{fast_profile}"])
    now = profile_settings(fast_profile)
    (line,) = advice(job, [cost(now | {"threads": 2})], "argmax")
    assert line.startswith(f"warning: latbench:{fast_profile} was fitted on table 0c4eaba1, measured with other")
    assert "(threads: 2 then, 1 now)" in line  # names what differs
    assert advice(job, [cost(now)], "argmax") == []  # the same: silent


def test_a_predictor_that_measured_little_of_the_space_is_warned(fast_profile):
    from types import SimpleNamespace

    from latbench.spaces import get_space
    from nas.cost import LoadedCost
    from predictors.lut import LUT

    cifar = get_space("fbnet-cifar")
    ops = cifar.ops()
    job = SearchJob(costs=[f"latbench:{fast_profile}"], space="fbnet-imagenet")

    def cost(specs):
        model = SimpleNamespace(lut_=LUT.from_arrays(specs, [1.0] * len(specs)), unit="ms",
                                info_={"space": "fbnet-cifar"})
        return LoadedCost(spec=f"latbench:{fast_profile}", model=model, term=None)

    (line,) = advice(job, [cost(ops)], "argmax")  # cifar's ops are none of imagenet's
    total = len(get_space("fbnet-imagenet").ops())
    assert line.startswith(f"warning: latbench:{fast_profile} measured 0 of the {total} ops of fbnet-imagenet "
                           "(it was fitted on fbnet-cifar); the rest are GBDT guesses")
    assert f"latbench collect --device {fast_profile} --space fbnet-imagenet" in line
    assert advice(SearchJob(costs=[f"latbench:{fast_profile}"]), [cost(ops)], "argmax") == []  # all of cifar


def test_a_network_correction_fitted_on_another_space_is_warned(fast_profile):
    from types import SimpleNamespace

    from nas.cost import LoadedCost

    def cost(info):
        return LoadedCost(spec=f"latbench:{fast_profile}", model=SimpleNamespace(info_=info, unit="ms"), term=None)

    job = SearchJob(costs=[f"latbench:{fast_profile}"], space="fbnet-imagenet")
    (line,) = advice(job, [cost({"space": "fbnet-cifar", "network_correction": True})], "argmax")
    assert line.startswith(f"warning: latbench:{fast_profile}'s network correction was fitted on networks of "
                           "fbnet-cifar, and fbnet-imagenet's networks are not those")
    assert f"latbench fit-predictor --device {fast_profile} --space fbnet-imagenet" in line
    assert advice(job, [cost({"space": "fbnet-cifar", "network_correction": False})], "argmax") == []  # a sum
    assert advice(job, [cost({"space": "fbnet-imagenet", "network_correction": True})], "argmax") == []


def test_a_cost_records_which_fitted_predictor_it_is(flops, tmp_path):
    from types import SimpleNamespace

    from nas.cost import LoadedCost

    assert flops.to_dict()["predictor"] is None  # analytic: nothing fitted to name
    info = {"folder": str(tmp_path / "pi"), "manifest_sha256": "ab" * 32, "device": "pi", "table": "0c4eaba1",
            "created_at": "2026-01-01T00:00:00+0000", "runtime_version": "hwnasbench-raspi4",
            "feature_names": ["flops"] * 40}
    cost = LoadedCost("latbench:pi", SimpleNamespace(info_=info, unit="ms"), flops.term)
    recorded = cost.to_dict()["predictor"]
    assert {k: recorded[k] for k in ("folder", "manifest_sha256", "device", "table", "created_at",
                                     "runtime_version")} == {k: v for k, v in info.items() if k != "feature_names"}
    assert "feature_names" not in recorded  # what names the artifact, not all of its manifest


def test_verify_on_an_imported_device_says_to_give_a_verify_device(latbench_home, tmp_path):
    from latbench.errors import UsageError
    from nas.flow import check_after_search

    job = SearchJob(costs=["latbench:raspi4"], verify=True, out_dir=tmp_path / "out")
    with pytest.raises(UsageError, match="--verify measures on raspi4, which has a predictor but no device "
                                         "profile") as info:
        check_after_search(job, ["raspi4"])
    assert "--verify-device NAME" in info.value.hint and not (tmp_path / "out").exists()
