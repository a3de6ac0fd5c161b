"""The fit report's picture: predicted vs measured, log-log, with the +-10% band."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from predictors import metrics


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
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    panels = [p for p in panels if len(p[1])]
    fig = Figure(figsize=(5.2 * max(1, len(panels)), 5.0), dpi=110)
    for i, (label, pred, true) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
        # the share is the table's +-10% (rows measured at 0 left out, a prediction <= 0 a
        # miss), though a log axis can draw neither of those
        share = metrics.accuracy_within(pred, true, 0.10)
        keep = (true > 0) & (pred > 0)
        pred, true = pred[keep], true[keep]
        inside = metrics.within(pred, true, 0.10)
        lo, hi = min(pred.min(), true.min()) * 0.8, max(pred.max(), true.max()) * 1.25
        line = np.geomspace(lo, hi, 100)
        ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="+-10%")
        ax.plot(line, line, color="tab:green", lw=1)
        ax.scatter(true[inside], pred[inside], s=10, color="tab:blue", label=f"within ({share:.0%})")
        ax.scatter(true[~inside], pred[~inside], s=10, color="tab:red", label="outside")
        ax.set_xscale("log")
        ax.set_yscale("log")
        # Plain numbers at 1, 2 and 5 of each decade (1 alone over many decades, 1-9 within
        # one): under a decade matplotlib labels the minor ticks too, and neighbouring 10^x
        # labels ran into each other.
        decades = np.log10(hi / lo)
        subs = (1.0,) if decades > 2.5 else (1.0, 2.0, 5.0) if decades > 0.8 else tuple(range(1, 10))
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(base=10, subs=subs))
            axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.3g}"))
            axis.set_minor_formatter(NullFormatter())
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
