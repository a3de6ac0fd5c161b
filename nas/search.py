"""The DNAS training loop (FBNet): weights and theta trained in turn, epoch by epoch.

Each epoch first trains the supernet's weights with SGD on the weight split (CE
alone: the cost does not depend on the weights), then, after the warm-up epochs,
theta with Adam on the theta split under the cost form's loss. Every forward pass
draws Gumbel noise per sample at the epoch's temperature.

The cost term is the expected cost under softmax(theta), the distribution the final arch is
drawn from (argmax, samples), not under the batch's Gumbel weights as in FBNet: the CE's
gradient on theta shrinks about as 1/temperature while the cost's does not, so the cost weighs
more early (about 5x at the default start of 5.0) and the balance moves as the temperature
anneals. FBNet's alpha and beta, and a --lambda, do not carry over between schedules as they are.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from latbench.errors import UsageError
from latbench.spaces.fbnet import SKIP_INDEX
from latbench.validation import Interval, check_params
from nas.cost import CostForm
from nas.data import ImageSet, SearchData, batches, num_batches
from nas.distributed import World
from nas.supernet import ArchNet, Supernet, temperature

#: on_batch(stage, done, total): stage is "weights", "theta", "retrain" or "calibrate".
BatchCallback = Callable[[str, int, int], None]
EpochCallback = Callable[[dict], None]


@dataclass
class SearchConfig:
    """Settings of one search; defaults are FBNet's where FBNet has one."""

    epochs: int = 10
    warmup_epochs: int = 2
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    theta_lr: float = 0.01
    theta_weight_decay: float = 5e-4
    initial_temperature: float = 5.0
    temperature_decay: float = 0.956
    width_mult: float = 1.0
    seed: int = 0
    torch_device: str = "cpu"

    _constraints = {
        "epochs": Interval(int, 1), "warmup_epochs": Interval(int, 0), "batch_size": Interval(int, 2),
        "lr": Interval(float, 0), "momentum": Interval(float, 0, 1), "weight_decay": Interval(float, 0),
        "theta_lr": Interval(float, 0), "theta_weight_decay": Interval(float, 0),
        "initial_temperature": Interval(float, 1e-6), "temperature_decay": Interval(float, 1e-6, 1),
        "width_mult": Interval(float, 1e-3, 4), "seed": Interval(int, 0),
    }

    def __post_init__(self) -> None:
        check_params("SearchConfig", asdict(self), self._constraints)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchOutcome:
    supernet: Supernet
    curves: list[dict] = field(default_factory=list)

    @property
    def arch(self) -> tuple[int, ...]:
        return self.supernet.argmax_arch()


def skip_share(arch: Sequence[int]) -> float:
    """Share of layers that chose the skip candidate (a collapse check)."""
    return sum(1 for c in arch if c == SKIP_INDEX) / len(arch)


def run_search(space, data: SearchData, costs: Sequence, form: CostForm, config: SearchConfig, *,
               on_batch: BatchCallback | None = None, on_epoch: EpochCallback | None = None,
               world: World | None = None) -> SearchOutcome:
    """Train a supernet of `space` on `data`; `costs` are CostTerms (predictors.cost_term).

    Under torchrun (`world` from nas.distributed.init_world) every rank runs this with the
    same seed and data; each takes its share of every batch, and all end with the same
    weights and theta."""
    on_batch = on_batch or (lambda *a: None)
    on_epoch = on_epoch or (lambda r: None)
    world = world or World()
    _check_batch_size(config.batch_size, world.world_size)
    for split in ("weights", "theta"):
        if len(getattr(data, split)) < 2 * world.world_size:
            raise UsageError(f"the {split} split has {len(getattr(data, split))} image(s); training needs at "
                             f"least 2 per process ({world.world_size} process(es))",
                             "use more training images (--limit-train) or fewer processes")
    device = torch.device(config.torch_device)
    torch.manual_seed(config.seed)
    net = Supernet(space, data.num_classes, width_mult=config.width_mult, seed=config.seed).to(device)
    trained = world.wrap(net, device)  # DDP over the weights when distributed, else net itself
    costs = [c.to(device) for c in costs]
    opt_w = torch.optim.SGD(net.weight_parameters(), lr=config.lr, momentum=config.momentum,
                            weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    sched_w = torch.optim.lr_scheduler.CosineAnnealingLR(opt_w, T_max=config.epochs)
    opt_t = torch.optim.Adam([net.theta], lr=config.theta_lr, weight_decay=config.theta_weight_decay)
    shuffle = torch.Generator().manual_seed(config.seed)
    noise = torch.Generator(device=device).manual_seed(world.noise_seed(config.seed))
    outcome = SearchOutcome(net)
    norm = {"mean": data.mean, "std": data.std, "device": device, "world": world}
    n_w = num_batches(len(data.weights), config.batch_size)
    n_t = num_batches(len(data.theta), config.batch_size)

    for epoch in range(config.epochs):
        start = time.perf_counter()
        tau = temperature(epoch, config.initial_temperature, config.temperature_decay)
        net.train()
        record = {"epoch": epoch, "temperature": tau, "theta_frozen": epoch < config.warmup_epochs}
        record |= _weights_epoch(trained, data, config, tau, opt_w, shuffle, noise, norm, world,
                                 lambda i: on_batch("weights", i, n_w))
        sched_w.step()
        if epoch >= config.warmup_epochs:
            record |= _theta_epoch(net, data, config, tau, costs, form, opt_t, shuffle, noise, norm, world,
                                   lambda i: on_batch("theta", i, n_t))
        record |= describe_theta(net, costs)
        record["epoch_s"] = time.perf_counter() - start
        outcome.curves.append(record)
        on_epoch(record)
    world.average_buffers_(net)
    return outcome


def _weights_epoch(net, data, config, tau, opt, shuffle, noise, norm, world, tick) -> dict:
    """One pass over the weight split: SGD on CE, theta held. `net` may be DDP-wrapped, which
    averages the weight gradients over the ranks."""
    theta = net.module.theta if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net.theta
    theta.requires_grad_(False)
    total = correct = seen = 0.0
    for i, (x, y) in enumerate(batches(data.weights, config.batch_size, shuffle=True,
                                       generator=shuffle, min_batch=2, **norm)):
        logits = net(x, tau, noise)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(y)
        correct += float((logits.argmax(1) == y).sum())
        seen += len(y)
        tick(i + 1)
    theta.requires_grad_(True)
    total, correct, seen = world.sum([total, correct, seen], norm["device"])
    return {"weights_loss": total / seen, "weights_accuracy": correct / seen, "weights_samples": int(seen)}


def _theta_epoch(net, data, config, tau, costs, form, opt, shuffle, noise, norm, world, tick) -> dict:
    """One pass over the theta split: Adam on the cost form's loss, weights held (no weight
    gradients are computed, which saves about half of each backward pass). Distributed,
    theta's gradient is averaged over the ranks: the mean of their CE terms plus the cost
    term, which every rank computes alike."""
    weights = net.weight_parameters()
    for p in weights:
        p.requires_grad_(False)
    ce_sum = loss_sum = seen = 0.0
    try:
        for i, (x, y) in enumerate(batches(data.theta, config.batch_size, shuffle=True,
                                           generator=shuffle, min_batch=2, **norm)):
            ce = F.cross_entropy(net(x, tau, noise), y)
            probs = net.probs()
            loss = form.loss(ce, [c(probs) for c in costs])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            world.average_grad_([net.theta])
            opt.step()
            ce_sum += float(ce.detach()) * len(y)
            loss_sum += float(loss.detach()) * len(y)
            seen += len(y)
            tick(i + 1)
    finally:
        for p in weights:
            p.requires_grad_(True)
    ce_sum, loss_sum, seen = world.sum([ce_sum, loss_sum, seen], norm["device"])
    return {"theta_ce": ce_sum / seen, "theta_loss": loss_sum / seen, "theta_samples": int(seen)}


@torch.no_grad()
def describe_theta(net: Supernet, costs: Sequence) -> dict:
    probs = net.probs()
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()
    arch = net.argmax_arch()
    return {
        "expected_cost": {c.name: float(c(probs)) for c in costs},
        "argmax_cost": {c.name: c.of_arch(arch) for c in costs},
        "mean_entropy": float(entropy) / math.log(net.space.num_candidates),
        "argmax_arch": list(arch),
        "skip_share": skip_share(arch),
    }


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, forward: Callable, data, config: SearchConfig, norm: dict,
                   max_batches: int = 10, on_batch: BatchCallback | None = None) -> None:
    """Re-estimate BatchNorm statistics for one path: the supernet's running statistics
    were gathered under mixtures, which a single arch never sees."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    total = min(max_batches, num_batches(len(data), config.batch_size))
    for i, (x, _) in enumerate(batches(data, config.batch_size, min_batch=2, **norm)):
        if i >= total:
            break
        forward(x)
        if on_batch:
            on_batch("calibrate", i + 1, total)
    model.eval()


@torch.no_grad()
def accuracy(forward: Callable, data, batch_size: int, norm: dict) -> float:
    correct = seen = 0
    for x, y in batches(data, batch_size, **norm):
        correct += int((forward(x).argmax(1) == y).sum())
        seen += len(y)
    return correct / max(seen, 1)


def supernet_accuracy(outcome: SearchOutcome, arch: Sequence[int], data: SearchData, config: SearchConfig,
                      on_batch: BatchCallback | None = None) -> float:
    """Held-out accuracy of `arch` with the supernet's shared weights (BN recalibrated for it).

    Restores the supernet's BatchNorm statistics afterwards, so several archs can be scored.
    """
    net = outcome.supernet
    device = torch.device(config.torch_device)
    norm = {"mean": data.mean, "std": data.std, "device": device}
    saved = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    momenta = {m: m.momentum for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    try:
        recalibrate_bn(net, lambda x: net.forward_arch(x, arch), data.weights, config, norm, on_batch=on_batch)
        return accuracy(lambda x: net.forward_arch(x, arch), data.test, config.batch_size, norm)
    finally:
        net.load_state_dict(saved, strict=False)
        for m, momentum in momenta.items():
            m.momentum = momentum


def _check_batch_size(batch_size: int, processes: int) -> None:
    """Each process's share of a batch must hold 2 images (BatchNorm cannot normalise one), or
    every batch is dropped and nothing trains."""
    if batch_size < 2 * processes:
        raise UsageError(f"--batch-size {batch_size} leaves each of the {processes} process(es) fewer than "
                         "2 images a step, and BatchNorm needs 2", f"use --batch-size {2 * processes} or more")


def retrain(space, arch: Sequence[int], data: SearchData, config: SearchConfig, epochs: int, *,
            validation: bool = False, on_batch: BatchCallback | None = None) -> dict:
    """Train `arch` alone from scratch on both training splits; its accuracy on the test split.

    The fair way to compare archs found by different searches: same width, data and epochs.
    `validation`: train on the weight split only and score on the theta split, leaving the
    test split unseen (for choosing among archs, as a random search does).
    """
    on_batch = on_batch or (lambda *a: None)
    _check_batch_size(config.batch_size, 1)
    device = torch.device(config.torch_device)
    torch.manual_seed(config.seed)
    model = ArchNet(space, arch, data.num_classes, width_mult=config.width_mult, seed=config.seed).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if validation:
        train, held_out = data.weights, data.theta
    else:
        train = ImageSet(torch.cat([data.weights.images, data.theta.images]),
                         torch.cat([data.weights.labels, data.theta.labels]))
        held_out = data.test
    norm = {"mean": data.mean, "std": data.std, "device": device}
    shuffle = torch.Generator().manual_seed(config.seed)
    n = num_batches(len(train), config.batch_size)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for i, (x, y) in enumerate(batches(train, config.batch_size, shuffle=True,
                                           generator=shuffle, min_batch=2, **norm)):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            on_batch("retrain", i + 1, n)
        sched.step()
    model.eval()
    return {"epochs": epochs, "accuracy": accuracy(model, held_out, config.batch_size, norm),
            "train_s": time.perf_counter() - start}
