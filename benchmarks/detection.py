"""Dense detection in the seed's regime: the default run's acceptance, and averaged BCE collapsing.

Every run is ``lightning-focal-train experiment=<experiment> seed=<s> threads=1`` plus the
arm's overrides, one at a time by default (``--jobs``), each with one thread. The default
``experiment=detection`` is RetinaNet on a timm ``test_resnet`` FPN over 64x64 ``shapes``
images with thousands of anchors per image, a few tenths of a percent of them positive.

Arms (``--arms``):

* ``focal``: ``experiment=detection``, the default run (focal γ=2, α=0.25, positives
  normaliser, prior bias, the default optimiser);
* ``focal_sgd`` / ``bce_mean_sgd``: focal, and BCE averaged over every anchor without the
  prior (``experiment=detection_bce_mean``), both under SGD with momentum 0.9 (RetinaNet's
  optimiser): the seed's failure;
* ``focal_adamw`` / ``bce_mean_adamw``: the same two under AdamW, whose per-parameter step
  sizes hide most of the loss-scale side of the imbalance;
* ``bce_pos``, ``focal_noprior``, ``focal_warmup``: the other ``detection_*`` experiments.

Per run it records the seed, test mAP@[.5:.95], mAP50, the AP of every class (the rarest
included), the steps, the process CPU time (user + sys, which another job on the machine
changes far less than the wall time) and the regime the loss saw (anchors per image,
positive anchors per image and their ratio, means over the logged training steps).

    cd benchmarks && python detection.py --seeds 0 1 2    # writes results/detection.{md,png}
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _runs import mean_std, run_experiment

# name: (experiment, overrides, description)
ARMS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "focal": ("detection", (), "default run: focal γ=2 α=0.25, prior bias"),
    "focal_sgd": (
        "detection",
        ("optimizer=sgd",),
        "focal γ=2 α=0.25, prior bias — SGD",
    ),
    "bce_mean_sgd": (
        "detection_bce_mean",
        ("optimizer=sgd",),
        "BCE averaged over all anchors, no prior — SGD",
    ),
    "focal_adamw": (
        "detection",
        ("optimizer=adamw",),
        "focal γ=2 α=0.25, prior bias — AdamW",
    ),
    "bce_mean_adamw": (
        "detection_bce_mean",
        ("optimizer=adamw",),
        "BCE averaged over all anchors, no prior — AdamW",
    ),
    "bce_pos": ("detection_bce_pos", (), "BCE / positives, prior bias"),
    "focal_noprior": ("detection_focal_noprior", (), "focal γ=2 α=0.25, no prior"),
    "focal_warmup": ("detection_focal_warmup", (), "focal, γ warmup 0→2, prior bias"),
}
DEFAULT_ARMS = ["focal", "focal_sgd", "bce_mean_sgd", "bce_mean_adamw"]
CLASSES = ("square", "disk", "triangle")  # shapes' classes at 60 / 30 / 10 %


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (1 thread each)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--name", default="detection", help="results file stem: <out>/<name>.{md,png}"
    )
    parser.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="detection_"))
    grid = [(arm, seed) for seed in args.seeds for arm in args.arms]

    def run(job: tuple[str, int]) -> dict[str, float]:
        arm, seed = job
        experiment, overrides, _ = ARMS[arm]
        return run_experiment(experiment, seed, root / arm, [*overrides, *args.extra])

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(grid, pool.map(run, grid)))

    per_run = [
        "| arm | seed | mAP@[.5:.95] | mAP50 | "
        + " | ".join(f"AP {c}" for c in CLASSES)
        + " | steps | CPU s | wall s | anchors / image | positives / image | positive ratio | p of positives (end) |",
        "|---|---|---|---|" + "---|" * len(CLASSES) + "---|---|---|---|---|---|---|",
    ]
    for (arm, seed), m in results.items():
        per_run.append(
            f"| {arm} | {seed} | {fmt(m.get('test/map'))} | {fmt(m.get('test/map_50'))} | "
            + " | ".join(fmt(m.get(f"test/map_class/{c}")) for c in CLASSES)
            + f" | {m.get('steps', 0):.0f} | {m['cpu_s']:.0f} | {m['wall_s']:.0f} | "
            f"{m.get('focal/anchors_per_image_mean', float('nan')):.0f} | "
            f"{m.get('focal/positives_per_image_mean', float('nan')):.1f} | "
            f"{100 * m.get('focal/positive_fraction_mean', float('nan')):.2f} % | "
            f"{fmt(m.get('focal/p_positives'))} |"
        )
    summary_rows = [
        "| arm | mAP@[.5:.95] | mAP50 | AP triangle (rarest) | CPU s / run (max) |",
        "|---|---|---|---|---|",
    ]
    summary = {}
    for arm in args.arms:
        runs = [m for (a, _), m in results.items() if a == arm]
        maps = [m.get("test/map", 0.0) for m in runs]
        map50 = [m.get("test/map_50", 0.0) for m in runs]
        rare = [m.get("test/map_class/triangle", 0.0) for m in runs]
        summary[arm] = (statistics.mean(maps), statistics.mean(map50))
        summary_rows.append(
            f"| {ARMS[arm][2]} (`{arm}`) | {mean_std(maps)} | {mean_std(map50)} | "
            f"{mean_std(rare)} | {max(m['cpu_s'] for m in runs):.0f} |"
        )
    header = (
        f"`python benchmarks/detection.py --seeds {' '.join(map(str, args.seeds))} "
        f"--arms {' '.join(args.arms)}`{' ' + ' '.join(args.extra) if args.extra else ''}: "
        f"{args.jobs} run(s) at a time, 1 thread each; test split of each run's own seed. "
        "Mean ± std over seeds.\n\n"
    )
    text = header + "\n".join(summary_rows) + "\n\nEvery run:\n\n" + "\n".join(per_run)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text + "\n")
    print(text)
    plot(args.arms, summary, len(args.seeds), args.out / f"{args.name}.png")


def plot(arms: list[str], summary: dict[str, tuple[float, float]], seeds: int, path: Path) -> None:
    """Bars of mAP@[.5:.95] and mAP50 per arm (means over ``seeds``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.4))
    xs = range(len(arms))
    ax.bar([x - 0.2 for x in xs], [summary[a][0] for a in arms], 0.4, label="mAP@[.5:.95]")
    ax.bar([x + 0.2 for x in xs], [summary[a][1] for a in arms], 0.4, label="mAP50")
    ax.set_xticks(list(xs), [ARMS[a][2] for a in arms], rotation=15, ha="right", fontsize=7)
    ax.set_ylim(0, 1.15)
    ax.set_title(f"shapes detection (RetinaNet, dense regime), mean of {seeds} seeds")
    ax.legend(fontsize=8, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
