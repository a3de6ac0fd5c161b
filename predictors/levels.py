"""LatencyLevels: pull a prediction towards the level the device's measured latencies sit on.

Where launch and synchronisation overheads dominate (a GPU timing small ops through
TensorRT), latencies do not vary smoothly with an op's size: they sit on a few levels.
HW-NAS-Bench's Jetson TX2 blocks sit at 0.51-0.56 ms (a floor no block goes under),
0.75-0.83 and 1.1-1.2 ms, with little in between. A smooth model overshoots the floor and
predicts between levels. This moves a prediction to the point of highest density of the
measured latencies within `reach` of it (onto a level, or as far towards it as `reach`
allows), when at least `MIN_MASS` measured ops are there. On a device without levels (a
CPU) it would only add error, so the GBDT turns it on per device by cross-validation
(`predictors.selection`).
"""

from __future__ import annotations

import numpy as np

#: Kernel width of the level density, as a share of `reach` (in log latency).
BANDWIDTH_SHARE = 0.75
#: Fewest measured ops (kernel-weighted) that make a level worth moving a prediction onto.
MIN_MASS = 3.0
#: Grid step of the lookup, in log latency (0.25%): snapping costs one index per prediction.
STEP = 0.0025


class LatencyLevels:
    """Levels of a device's measured latencies, and the snap of predictions onto them.

    Parameters
    ----------
    reach : how far (relative) a prediction may move towards a level; 0 leaves it alone.
    """

    def __init__(self, reach: float):
        if not 0 <= reach < 1:
            raise ValueError(f"reach must be in [0, 1); got {reach!r}")
        self.reach = float(reach)

    def fit(self, latency_ms: np.ndarray) -> "LatencyLevels":
        y = np.asarray(latency_ms, dtype=np.float64)
        # 1e-4 in log latency is a 25th of a grid step: the same levels, a smaller saved file
        self.log_ms_ = np.round(np.sort(np.log(y[y > 0])), 4)
        self._build()
        return self

    def _build(self) -> None:
        """The snap target of each grid point (log ms; NaN: stay), so `apply` is a lookup. The
        density is the measured latencies binned on the grid and smoothed by the kernel: linear
        in the grid and the ops, not their product (a LUT of 100k ops builds in milliseconds)."""
        self.start_, self.targets_ = 0.0, np.zeros(0)
        reach = np.log1p(self.reach)
        if reach == 0 or not len(self.log_ms_):
            return
        width = int(reach / STEP)  # grid steps a prediction may move
        self.start_ = float(self.log_ms_[0]) - 2 * reach
        n = int(np.ceil((self.log_ms_[-1] + 2 * reach - self.start_) / STEP)) + 1
        grid = self.start_ + STEP * np.arange(n)
        counts = np.bincount(np.rint((self.log_ms_ - self.start_) / STEP).astype(np.int64), minlength=n)
        bandwidth = BANDWIDTH_SHARE * reach
        half = int(np.ceil(4 * bandwidth / STEP))
        kernel = np.exp(-0.5 * (STEP * np.arange(-half, half + 1) / bandwidth) ** 2)
        density = np.convolve(counts.astype(np.float64), kernel)[half:half + n]
        padded = np.r_[np.full(width, -1.0), density, np.full(width, -1.0)]
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * width + 1)
        best = windows.argmax(axis=1)  # offset of the densest point within reach of each grid point
        mass = windows[np.arange(n), best]
        self.targets_ = np.where(mass >= MIN_MASS, grid + (best - width) * STEP, np.nan)

    def apply(self, pred_ms: np.ndarray) -> np.ndarray:
        """`pred_ms` with each value moved towards a level within reach, where there is one."""
        if not len(self.targets_):
            return pred_ms
        pred_ms = np.asarray(pred_ms, dtype=np.float64)
        finite = np.isfinite(pred_ms) & (pred_ms > 0)
        log_pred = np.log(np.where(finite, pred_ms, 1.0))
        at = np.where(finite, np.rint((log_pred - self.start_) / STEP), -1).astype(np.int64)
        inside = (at >= 0) & (at < len(self.targets_))
        target = np.full(len(pred_ms), np.nan)
        target[inside] = self.targets_[at[inside]]
        reach = np.log1p(self.reach)  # the grid rounds by half a step: never move further
        moved = np.exp(np.clip(target, log_pred - reach, log_pred + reach))
        return np.where(np.isnan(target), pred_ms, moved)

    def to_dict(self) -> dict:
        return {"reach": self.reach, "log_ms": self.log_ms_.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyLevels":
        est = cls(float(data["reach"]))
        est.log_ms_ = np.asarray(data["log_ms"], dtype=np.float64)
        if est.log_ms_.ndim != 1 or not np.all(np.isfinite(est.log_ms_)):
            raise ValueError("its latency levels are not a list of finite numbers")
        est._build()
        return est
