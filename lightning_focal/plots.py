"""Figures that show what focal loss did: per-class recall, the γ curve, a reliability diagram.

matplotlib (the ``train`` extra) is imported when a figure is drawn, with the Agg backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_gamma_curve", "plot_per_class_recall", "plot_reliability"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_per_class_recall(
    recall: Sequence[float],
    class_names: Sequence[str],
    counts: Sequence[int] | None,
    path: str | Path,
    title: str = "per-class recall (test)",
) -> Path:
    """Bar chart of per-class recall, with training counts on a second axis.

    Example:
        >>> import tempfile, os
        >>> p = plot_per_class_recall([0.9, 0.2], ["a", "b"], [100, 2], os.path.join(tempfile.mkdtemp(), "r.png"))
        >>> p.suffix, p.stat().st_size > 1000
        ('.png', True)
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = list(range(len(recall)))
    ax.bar(xs, recall, color="tab:blue")
    ax.set_xticks(xs, list(class_names))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall")
    ax.set_title(title)
    if counts is not None:
        twin = ax.twinx()
        twin.plot(xs, list(counts), "o-", color="tab:orange")
        twin.set_yscale("log")
        twin.set_ylabel("training samples", color="tab:orange")
    return _save(fig, path)


def plot_gamma_curve(steps: Sequence[int], gammas: Sequence[float], path: str | Path) -> Path:
    """γ against the optimiser step.

    Example:
        >>> import tempfile, os
        >>> plot_gamma_curve([0, 1, 2], [0.0, 1.0, 2.0], os.path.join(tempfile.mkdtemp(), "g.png")).exists()
        True
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(list(steps), list(gammas))
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("γ")
    ax.set_title("focal γ over training")
    return _save(fig, path)


def plot_reliability(
    bins: dict[str, list[float]], path: str | Path, title: str = "reliability (test)"
) -> Path:
    """Reliability diagram from the bins of ``lightning_focal.metrics.ReliabilityBins``.

    Example:
        >>> import tempfile, os
        >>> bins = {"confidence": [0.3, 0.8], "accuracy": [0.2, 0.9], "count": [5.0, 10.0], "edges": [0.0, 0.5, 1.0]}
        >>> plot_reliability(bins, os.path.join(tempfile.mkdtemp(), "rel.png")).exists()
        True
    """
    plt = _pyplot()
    edges = bins["edges"]
    width = edges[1] - edges[0]
    centers = [e + width / 2 for e in edges[:-1]]
    fig, ax = plt.subplots(figsize=(4, 4))
    shown = [c > 0 for c in bins["count"]]
    ax.bar(
        [c for c, s in zip(centers, shown) if s],
        [a for a, s in zip(bins["accuracy"], shown) if s],
        width=width,
        edgecolor="black",
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left")
    return _save(fig, path)
