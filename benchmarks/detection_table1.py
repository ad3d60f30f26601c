"""Lin et al. 2017, Table 1, in shape: γ and α of focal loss, and the prior bias, under SGD.

Every run is the default detection run (``experiment=detection``: RetinaNet on a timm
``test_resnet`` FPN over 64x64 ``shapes``, 5,130 anchors an image, ~0.4 % positive, 1,100
steps) with the paper's optimiser (``optimizer=sgd``: momentum 0.9, lr 0.01 peak, weight decay
1e-4) and one change, as Hydra overrides:

* (a) γ=0 (α-balanced cross-entropy) with α ∈ {.10, .25, .50, .75, .90, .99};
* (b) γ ∈ {0, 0.5, 1, 2, 5} × α ∈ {.25, .50, .75};
* (c) the prior bias (``model.detector.prior_probability``: 0.01 or ``null``) on and off, for
  cross-entropy (``loss=ce``: γ=0, no α) and for focal loss (γ=2, α=0.25).

Runs shared between the parts (γ=0 × α ∈ {.25, .5, .75}; γ=2 α=.25 with the prior) are run
once. It writes ``results/detection_table1.md`` (every run: test mAP@[.5:.95], mAP50, the AP of
each class, the predicted p of positive anchors at the end, CPU time) and
``results/detection_table1.png`` (the (a)+(b) grid as a heatmap, (c) as bars).

    python benchmarks/detection_table1.py --seeds 0 --jobs 2      # 21 runs, ~50 min on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _runs import run_experiment

ALPHAS_A = (0.10, 0.25, 0.50, 0.75, 0.90, 0.99)
GAMMAS_B = (0.0, 0.5, 1.0, 2.0, 5.0)
ALPHAS_B = (0.25, 0.50, 0.75)
CLASSES = ("square", "disk", "triangle")  # shapes' classes at 60 / 30 / 10 %
NO_PRIOR = "model.detector.prior_probability=null"


def arms() -> dict[str, tuple[str, ...]]:
    """{name: overrides} for every distinct run of parts (a), (b) and (c)."""
    out: dict[str, tuple[str, ...]] = {}
    for alpha in ALPHAS_A:
        out[f"g0_a{alpha:.2f}"] = ("loss.gamma=0", f"loss.alpha={alpha}")
    for gamma in GAMMAS_B:
        for alpha in ALPHAS_B:
            out[f"g{gamma:g}_a{alpha:.2f}"] = (f"loss.gamma={gamma}", f"loss.alpha={alpha}")
    out["ce_prior"] = ("loss=ce",)
    out["ce_noprior"] = ("loss=ce", NO_PRIOR)
    out["focal_noprior"] = ("loss.gamma=2", "loss.alpha=0.25", NO_PRIOR)
    return out


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (1 thread each)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--name", default="detection_table1")
    parser.add_argument("--only", nargs="+", help="run only these arms (names as in the table)")
    parser.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    args = parser.parse_args()

    table = arms()
    names = args.only or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        parser.error(f"unknown arms {unknown}; known: {list(table)}")
    root = Path(tempfile.mkdtemp(prefix="detection_table1_"))
    grid = [(name, seed) for seed in args.seeds for name in names]

    def run(job: tuple[str, int]) -> dict[str, float]:
        name, seed = job
        overrides = ("optimizer=sgd", *table[name], *args.extra)
        return run_experiment("detection", seed, root / name, overrides)

    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(grid, pool.map(run, grid)))

    def mean(name: str, key: str) -> float | None:
        values = [m[key] for (n, _), m in results.items() if n == name and key in m]
        return statistics.mean(values) if values else None

    rows = [
        "| run | overrides (with `experiment=detection optimizer=sgd`) | seed | mAP@[.5:.95] "
        "| mAP50 | " + " | ".join(f"AP {c}" for c in CLASSES) + " | p of positives (end) | CPU s |",
        "|---|---|---|---|---|" + "---|" * len(CLASSES) + "---|---|",
    ]
    for (name, seed), m in results.items():
        rows.append(
            f"| {name} | `{' '.join(table[name])}` | {seed} | {fmt(m.get('test/map'))} | "
            f"{fmt(m.get('test/map_50'))} | "
            + " | ".join(fmt(m.get(f"test/map_class/{c}")) for c in CLASSES)
            + f" | {fmt(m.get('focal/p_positives'))} | {m['cpu_s']:.0f} |"
        )

    def grid_table(key: str, label: str) -> list[str]:
        alphas = sorted(set(ALPHAS_A) | set(ALPHAS_B))
        lines = [
            f"| {label}: γ \\ α | " + " | ".join(f"{a:.2f}" for a in alphas) + " |",
            "|---|" + "---|" * len(alphas),
        ]
        for gamma in GAMMAS_B:
            cells = []
            for alpha in alphas:
                name = f"g{gamma:g}_a{alpha:.2f}"
                cells.append(fmt(mean(name, key)) if name in names else "")
            lines.append(f"| {gamma:g} | " + " | ".join(cells) + " |")
        return lines

    prior_rows = [
        "| loss | prior bias on: mAP / mAP50 | prior bias off: mAP / mAP50 |",
        "|---|---|---|",
    ]
    for label, on, off in (
        ("cross-entropy (γ=0, no α)", "ce_prior", "ce_noprior"),
        ("focal (γ=2, α=0.25)", "g2_a0.25", "focal_noprior"),
    ):
        cells = [
            f"{fmt(mean(n, 'test/map'))} / {fmt(mean(n, 'test/map_50'))}" if n in names else "—"
            for n in (on, off)
        ]
        prior_rows.append(f"| {label} | {cells[0]} | {cells[1]} |")

    cpu = [m["cpu_s"] for m in results.values()]
    header = (
        f"`python benchmarks/detection_table1.py --seeds {' '.join(map(str, args.seeds))} "
        f"--jobs {args.jobs}`{' ' + ' '.join(args.extra) if args.extra else ''}: "
        f"{len(results)} runs, {args.jobs} at a time, 1 thread each; "
        f"CPU time per run {min(cpu):.0f}-{max(cpu):.0f} s, {sum(cpu) / 60:.0f} CPU-min in all. "
        "Test split of each run's own seed"
        + (", mean over seeds" if len(args.seeds) > 1 else "")
        + ".\n\n"
    )
    text = (
        header
        + "(a) + (b): test mAP@[.5:.95]\n\n"
        + "\n".join(grid_table("test/map", "mAP"))
        + "\n\n(a) + (b): test mAP50\n\n"
        + "\n".join(grid_table("test/map_50", "mAP50"))
        + "\n\n(c) the prior bias\n\n"
        + "\n".join(prior_rows)
        + "\n\nEvery run:\n\n"
        + "\n".join(rows)
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text + "\n")
    print(text)
    plot(mean, names, args.out / f"{args.name}.png", len(args.seeds))


def plot(mean, names: list[str], path: Path, seeds: int) -> None:
    """Heatmap of mAP@[.5:.95] over (γ, α), and the prior-bias bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    alphas = sorted(set(ALPHAS_A) | set(ALPHAS_B))
    values = np.full((len(GAMMAS_B), len(alphas)), np.nan)
    for i, gamma in enumerate(GAMMAS_B):
        for j, alpha in enumerate(alphas):
            name = f"g{gamma:g}_a{alpha:.2f}"
            if name in names and mean(name, "test/map") is not None:
                values[i, j] = mean(name, "test/map")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=(3, 2))
    image = ax.imshow(
        values, cmap="viridis", vmin=0, vmax=np.nanmax(values) if np.isfinite(values).any() else 1
    )
    for i in range(len(GAMMAS_B)):
        for j in range(len(alphas)):
            if np.isfinite(values[i, j]):
                ax.text(
                    j, i, f"{values[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8
                )
    ax.set_xticks(range(len(alphas)), [f"{a:.2f}" for a in alphas])
    ax.set_yticks(range(len(GAMMAS_B)), [f"{g:g}" for g in GAMMAS_B])
    ax.set_xlabel("α (weight of positives)")
    ax.set_ylabel("γ")
    ax.set_title("test mAP@[.5:.95], SGD (Table 1a, 1b)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)

    labels, on, off = [], [], []
    for label, a, b in (
        ("CE", "ce_prior", "ce_noprior"),
        ("focal γ=2 α=.25", "g2_a0.25", "focal_noprior"),
    ):
        labels.append(label)
        on.append(mean(a, "test/map") or 0.0 if a in names else 0.0)
        off.append(mean(b, "test/map") or 0.0 if b in names else 0.0)
    xs = np.arange(len(labels))
    bx.bar(xs - 0.2, on, 0.4, label="prior bias π=0.01")
    bx.bar(xs + 0.2, off, 0.4, label="bias 0 (no prior)")
    bx.set_xticks(xs, labels)
    bx.set_ylabel("test mAP@[.5:.95]")
    bx.set_title("prior bias on / off, SGD (Table 1c)", fontsize=9)
    bx.legend(fontsize=8)
    fig.suptitle(f"shapes detection, RetinaNet, 5,130 anchors/img, {seeds} seed(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
