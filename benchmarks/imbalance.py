"""Long-tailed classification: focal loss beside the strongest simple baselines on digits_lt.

Runs ``lightning-focal-train experiment=imbalance_<arm> seed=<s> threads=1`` for each arm
and seed (two runs at a time on two cores), reads the test metrics of the best
checkpoint from each run's CSV log, and writes a Markdown table (means, and every run) and a
plot:

    python benchmarks/imbalance.py --seeds 0 1 2 3 4 --out benchmarks/results

Arms (each one ``experiment=imbalance_<arm>`` word): cross-entropy, CE with class-balanced
weights (Cui et al. 2019), logit-adjusted CE τ=1 (balanced softmax; Menon et al. 2021), focal
γ=2, class-balanced focal, class-balanced focal with a γ warmup (the default run),
logit-adjusted focal, focal with deferred class-balanced α (DRW, Cao et al. 2019);
``focal_warmup`` on request.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _runs import mean_std, run_grid

ARMS = {
    "ce": "cross-entropy",
    "ce_cb": "CE + class-balanced weights",
    "la_ce": "logit-adjusted CE (τ=1)",
    "focal": "focal γ=2",
    "focal_cb": "focal γ=2 + class-balanced α",
    "focal_cb_warmup": "focal + class-balanced α + γ warmup",
    "la_focal": "logit-adjusted focal (γ=2, τ=1)",
    "focal_drw": "focal γ=2 + DRW α (from 80 %)",
    "focal_warmup": "focal γ=2, γ warmup",
}
DEFAULT_ARMS = [a for a in ARMS if a != "focal_warmup"]


def rarest(metrics: dict[str, float], classes: list[int]) -> float:
    return statistics.mean(metrics[f"test/recall/{c}"] for c in classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    args = parser.parse_args()

    from lightning_focal.data import DigitsLTDataModule

    counts = DigitsLTDataModule(imbalance_ratio=100.0).class_counts().tolist()
    rare3 = sorted(range(len(counts)), key=lambda c: (counts[c], c))[:3]
    root = Path(tempfile.mkdtemp(prefix="imbalance_"))
    grid = run_grid([f"imbalance_{a}" for a in args.arms], args.seeds, root, args.extra, args.jobs)
    results = [((e.removeprefix("imbalance_"), s), m) for (e, s), m in grid.items()]

    table = [
        "| loss (`experiment=imbalance_<arm>`) | balanced acc | recall, 3 rarest | ECE "
        "| wall s / run | CPU s / run |",
        "|---|---|---|---|---|---|",
    ]
    summary = {}
    for arm in args.arms:
        runs = [m for (a, _), m in results if a == arm]
        bal = [m["test/balanced_acc"] for m in runs]
        rr = [rarest(m, rare3) for m in runs]
        ece = [m["test/ece"] for m in runs]
        summary[arm] = [(statistics.mean(v), statistics.pstdev(v)) for v in (bal, rr, ece)]
        table.append(
            f"| {ARMS[arm]} (`{arm}`) | {mean_std(bal)} | {mean_std(rr)} | {mean_std(ece)} | "
            f"{statistics.median(m['wall_s'] for m in runs):.0f} | "
            f"{statistics.median(m['cpu_s'] for m in runs):.0f} |"
        )
    per_run = [
        "",
        "Every run:",
        "",
        "| arm | seed | balanced acc | recall, 3 rarest | ECE | wall s | CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in args.arms:
        for (a, seed), m in results:
            if a == arm:
                per_run.append(
                    f"| {arm} | {seed} | {m['test/balanced_acc']:.3f} | {rarest(m, rare3):.3f} "
                    f"| {m['test/ece']:.3f} | {m['wall_s']:.0f} | {m['cpu_s']:.0f} |"
                )
    text = "\n".join(table + per_run)
    header = (
        f"`python benchmarks/imbalance.py --seeds {' '.join(map(str, args.seeds))} "
        f"--jobs {args.jobs}`{' ' + ' '.join(args.extra) if args.extra else ''}: "
        f"digits_lt, imbalance ratio 100, noise σ=1, train counts {counts}, timm test_resnet, 600 steps, "
        f"seeds {args.seeds}, 1 thread per run; rarest classes {rare3}; mean ± std over seeds.\n\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "imbalance.md").write_text(header + text + "\n")
    print(header + text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    xs = range(len(args.arms))
    width = 0.27
    for i, label in enumerate(("balanced acc", "recall, 3 rarest", "ECE")):
        ax.bar(
            [x + (i - 1) * width for x in xs],
            [summary[a][i][0] for a in args.arms],
            width,
            yerr=[summary[a][i][1] for a in args.arms],
            capsize=2,
            label=label,
        )
    ax.set_xticks(list(xs), [ARMS[a] for a in args.arms], rotation=20, ha="right", fontsize=8)
    ax.set_title(f"digits_lt (ratio 100), mean ± std of {len(args.seeds)} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "imbalance.png", dpi=110)


if __name__ == "__main__":
    main()
