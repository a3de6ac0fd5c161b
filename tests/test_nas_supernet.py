"""The supernet: the measured blocks inside, Gumbel noise per sample, the temperature schedule,
and channel scaling that keeps a projection a projection."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="nas needs torch (pip install -e .)")

from latbench.modules import FBNetBlock  # noqa: E402
from latbench.spaces import get_space  # noqa: E402
from latbench.spaces.fbnet import SKIP_INDEX  # noqa: E402
from nas.supernet import ArchNet, Supernet, channel_map, gumbel_softmax, temperature  # noqa: E402


@pytest.fixture(scope="module")
def space():
    return get_space("fbnet-cifar")


@pytest.fixture(scope="module")
def small_net(space) -> Supernet:
    return Supernet(space, 10, width_mult=0.125, seed=0)


def test_temperature_starts_at_5_and_decays_by_0_956_per_epoch():
    assert temperature(0) == 5.0
    assert temperature(1) == pytest.approx(4.78)
    assert temperature(10) == pytest.approx(5.0 * 0.956 ** 10)
    assert temperature(3, initial=2.0, decay=0.5) == pytest.approx(0.25)


def test_gumbel_noise_is_drawn_per_sample():
    theta = torch.zeros(22, 9)
    w = gumbel_softmax(theta, 1.0, batch=4, generator=torch.Generator().manual_seed(0))
    assert w.shape == (4, 22, 9)
    assert torch.allclose(w.sum(-1), torch.ones(4, 22))
    for i in range(1, 4):  # same theta, different noise: every sample mixes differently
        assert not torch.allclose(w[0], w[i])


def test_lower_temperature_gives_peakier_weights():
    theta = torch.zeros(22, 9)
    hot = gumbel_softmax(theta, 5.0, 64, torch.Generator().manual_seed(1))
    cold = gumbel_softmax(theta, 0.2, 64, torch.Generator().manual_seed(1))
    assert float(cold.max(-1).values.mean()) > 0.8 > float(hot.max(-1).values.mean())


def test_mixed_layers_hold_the_blocks_latbench_measures(space, small_net):
    assert len(small_net.mixed) == space.num_layers
    for layer in small_net.mixed:
        assert len(layer.candidates) == space.num_candidates
        assert all(isinstance(m, FBNetBlock) for m in list(layer.candidates)[:SKIP_INDEX])
    # the first block of stage 2 changes 16 -> 24 channels: its skip is a projection, not identity
    assert not isinstance(small_net.mixed[1].candidates[SKIP_INDEX], torch.nn.Identity)
    assert isinstance(small_net.mixed[2].candidates[SKIP_INDEX], torch.nn.Identity)


def test_channel_map_keeps_distinct_widths_distinct():
    m = channel_map([16, 24, 32, 64, 112, 184, 352, 1504], 0.125)
    widths = [m[c] for c in sorted(m)]
    assert widths == sorted(set(widths)) and all(w % 4 == 0 for w in widths)
    assert channel_map([16, 24, 32], 1.0) == {16: 16, 24: 24, 32: 32}


def test_forward_shapes_and_one_path_equals_one_hot_weights(space, small_net):
    small_net.eval()
    x = torch.randn(3, 3, 8, 8)
    arch = (0, 8, 3, 7, 1, 2, 4, 5, 6, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2)
    one_hot = torch.nn.functional.one_hot(torch.tensor(arch), 9).float().expand(3, -1, -1)
    with torch.no_grad():
        assert small_net(x, 5.0).shape == (3, 10)
        assert torch.allclose(small_net.forward_arch(x, arch), small_net.forward_weights(x, one_hot), atol=1e-5)


def test_theta_gets_gradient_through_the_mixture(small_net):
    small_net.train()
    small_net.zero_grad()
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(small_net(x, 1.0), y).backward()
    assert small_net.theta.grad is not None and bool(small_net.theta.grad.abs().sum() > 0)


def test_samples_follow_theta(space):
    net = Supernet(space, 10, width_mult=0.125)
    with torch.no_grad():
        net.theta.fill_(-10.0)
        net.theta[:, 3] = 10.0
    assert net.argmax_arch() == (3,) * 22
    draws = net.sample_archs(5, generator=torch.Generator().manual_seed(0))
    assert draws == [(3,) * 22] * 5


def test_arch_net_is_the_network_of_the_space(space):
    arch = (8,) * 22
    model = ArchNet(space, arch, 10, width_mult=0.125)
    kinds = [type(m).__name__ for m in model]
    assert len(model) == len(space.network(arch).ops)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert kinds.count("Identity") == sum(1 for op in space.network(arch).ops if op.is_identity)
