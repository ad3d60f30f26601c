"""Run `lightning-focal-train` experiments in subprocesses and read their test metrics."""

from __future__ import annotations

import csv
import os
import re
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
    """One CLI run, 1 thread, no progress bar; returns its logged test/* metrics, wall_s and cpu_s.

    The run's console output is kept in ``<root>/<experiment>_<seed>/std{out,err}.log``.
    """
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
    home.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(home / "stdout.log", "w") as out, open(home / "stderr.log", "w") as err:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=err, text=True)
        # wait4 reaps this child only and returns its own CPU time (user + sys), which a busy
        # machine changes far less than the wall time; getrusage(CHILDREN) would mix parallel runs
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"{experiment} seed {seed} failed:\n{(home / 'stderr.log').read_text()[-3000:]}"
        )
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
    # the training diagnostics: last logged value as focal/<key>, mean over the run's logging
    # steps as focal/<key>_mean
    logged: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            if k.startswith("focal/") and v not in ("", None):
                logged.setdefault(k, []).append(float(v))
    for k, values in logged.items():
        metrics[k] = values[-1]
        metrics[f"{k}_mean"] = statistics.mean(values)
    # the run's planned optimiser steps, from the config the run saved
    config = run / ".hydra" / "config.yaml"
    match = (
        re.search(r"^  max_steps: (\d+)$", config.read_text(), re.M) if config.exists() else None
    )
    if match:
        metrics["steps"] = float(match.group(1))
    metrics["wall_s"] = wall
    metrics["cpu_s"] = usage.ru_utime + usage.ru_stime
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
