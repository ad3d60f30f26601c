"""Run `lightning-focal-train` experiments in subprocesses and read their test metrics."""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run_experiment(
    experiment: str, seed: int, root: Path, extra: Sequence[str] = ()
) -> dict[str, float]:
    """One CLI run, 1 thread, no progress bar; returns its logged test/* metrics and wall_s."""
    home = root / f"{experiment}_{seed}"
    env = {**os.environ, "LIGHTNING_FOCAL_ROOT": str(home), "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-m",
        "lightning_focal.train",
        f"experiment={experiment}",
        f"seed={seed}",
        "threads=1",
        "callbacks.progress_bar=null",
        "+trainer.enable_progress_bar=false",
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{experiment} seed {seed} failed:\n{proc.stderr[-3000:]}")
    (run,) = (home / "logs").glob("*/runs/*")
    rows = list(
        csv.DictReader((run / "csv" / "version_0" / "metrics.csv").read_text().splitlines())
    )
    metrics = {
        k: float(v)
        for row in rows
        for k, v in row.items()
        if k.startswith("test/") and v not in ("", None)
    }
    # last logged value of the training diagnostics
    for row in rows:
        for k, v in row.items():
            if k.startswith("focal/") and v not in ("", None):
                metrics[k] = float(v)
    metrics["wall_s"] = wall
    return metrics


def run_grid(
    experiments: Sequence[str], seeds: Sequence[int], root: Path, extra: Sequence[str], jobs: int
):
    """{(experiment, seed): metrics}, ``jobs`` runs at a time."""
    grid = [(e, s) for s in seeds for e in experiments]
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda job: run_experiment(job[0], job[1], root, extra), grid))
    return dict(zip(grid, results))


def mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
