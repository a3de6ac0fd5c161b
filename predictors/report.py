"""The fit report's picture: predicted vs measured, log-log, with the +-10% band."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np


def scatter_png(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str = "") -> bytes:
    """PNG bytes of one panel per (label, predicted, measured); points outside the band in red.

    Needs matplotlib (``pip install matplotlib``); drawn with the Agg backend, no display.
    """
    buf = io.BytesIO()
    scatter_figure(panels, title).savefig(buf, format="png")
    return buf.getvalue()


def scatter_figure(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str = ""):
    """The matplotlib Figure `scatter_png` draws (kept apart so its layout can be checked)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    panels = [p for p in panels if len(p[1])]
    fig = Figure(figsize=(5.2 * max(1, len(panels)), 5.0), dpi=110)
    for i, (label, pred, true) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
        keep = (true > 0) & (pred > 0)
        pred, true = pred[keep], true[keep]
        inside = np.abs(pred - true) <= 0.10 * true
        lo, hi = min(pred.min(), true.min()) * 0.8, max(pred.max(), true.max()) * 1.25
        line = np.geomspace(lo, hi, 100)
        ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="+-10%")
        ax.plot(line, line, color="tab:green", lw=1)
        ax.scatter(true[inside], pred[inside], s=10, color="tab:blue", label=f"within ({inside.mean():.0%})")
        ax.scatter(true[~inside], pred[~inside], s=10, color="tab:red", label="outside")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            # Plain numbers (0.4, 2, 30): under a decade the minor ticks are labelled too, and
            # the default 10^x notation of neighbouring ones overlapped.
            axis.set_major_formatter(_plain_log_formatter())
            axis.set_minor_formatter(_plain_log_formatter())
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("measured latency (ms)")
        ax.set_ylabel("predicted latency (ms)")
        ax.set_title(f"{label} (n={len(true)})")
        ax.legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _plain_log_formatter():
    """matplotlib's choice of which log ticks to label, written as plain numbers (0.4, 3, 20)."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def _num_to_string(self, x, vmin, vmax):
            return f"{x:.3g}"

    return PlainLogFormatter(labelOnlyBase=False)
