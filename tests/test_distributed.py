"""Real multi-process DDP (2 CPU processes, gloo) through the CLI, as a user launches it."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LIGHTNING_FOCAL_ROOT": str(root),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        # the checkout under test, not whichever copy of the package is installed
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])
        ),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_focal.train", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # Lightning warns "It is recommended to use `self.log(..., sync_dist=True)`" for every
    # epoch-level tensor logged without it under DDP (20 lines in a classifier run)
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "sync_dist" in line]
    assert not warnings, "\n".join(warnings)
    # and "Using `DistributedSampler` with the dataloaders. During `trainer.test()` ...": the
    # padded sampler Lightning swaps in evaluates the last items twice
    assert "Using `DistributedSampler`" not in proc.stdout + proc.stderr
    return proc


def metric_rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(run / "csv" / "version_0" / "metrics.csv")))


def column(rows, key):
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]


def test_classifier_ddp_cpu_two_processes(tmp_path):
    from lightning_focal.data import DigitsLTDataModule
    from lightning_focal.losses import class_balanced_weights
    from lightning_focal.models.classifier import TimmClassifier
    from lightning_focal.schedules import LinearRamp

    common = [
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "debug=fast",
        "callbacks=ddp_check",
        "threads=1",
        "trainer.limit_val_batches=1.0",
        "logger=wandb",  # wandb (offline here) plus the CSV files read below
        # DRW: α switches on at step 3, on both ranks at once (ddp/focal_spread below; ranks
        # holding α of different lengths could not even all-gather)
        "callbacks.class_balanced_alpha.start=3",
    ]
    run_cli(tmp_path, *common, "trainer.limit_test_batches=1.0")
    runs = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1  # one output dir for both ranks
    run = runs[0]
    assert (run / "train_ddp_process_1.log").exists()  # rank 1 ran inside the same dir
    assert len(list((run / "checkpoints").glob("last*.ckpt"))) == 1
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # one wandb run, rank 0's
    rows = metric_rows(run)

    # The same γ on both ranks at every step, and the schedule's value.
    spread = column(rows, "ddp/focal_spread")
    assert [s for s, _ in spread] == list(range(6)) and all(v == 0.0 for _, v in spread)
    schedule = LinearRamp(start=0.0, end=2.0, fraction=0.3)
    gammas = column(rows, "focal/gamma")
    assert gammas and all(g == pytest.approx(schedule(s, 6)) for s, g in gammas)

    # α from the class counts equals the single-process computation.
    counts = DigitsLTDataModule(imbalance_ratio=100.0).class_counts()
    expected = class_balanced_weights(counts, "effective_number", 0.999)
    for c in range(10):
        (logged,) = {v for _, v in column(rows, f"focal/alpha/{c}")}
        assert logged == pytest.approx(float(expected[c]), rel=1e-6)

    # Validation metrics are synced: equal to one process evaluating the same weights on all the data.
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    step = last["global_step"]
    model = TimmClassifier(num_classes=10)  # weights from the checkpoint
    model.load_state_dict(last["state_dict"])
    model.eval()
    dm = DigitsLTDataModule(seed=0)
    dm.setup()
    x, y = dm.val_set.tensors
    with torch.no_grad():
        pred = model(x).argmax(1)
    acc = float((pred == y).float().mean())
    logged = [v for s, v in column(rows, "val/acc") if s == step - 1 or s == step]
    assert logged and logged[-1] == pytest.approx(acc, abs=1e-6)

    # The test metrics cover every test item once: equal to one process testing the checkpoint
    # that the run tested (its best) on the whole test split.
    (best,) = [p for p in (run / "checkpoints").glob("*.ckpt") if not p.name.startswith("last")]
    model.load_state_dict(torch.load(best, weights_only=False)["state_dict"])
    x, y = dm.test_set.tensors
    with torch.no_grad():
        pred = model(x).argmax(1)
    (logged,) = [v for _, v in column(rows, "test/acc")]
    assert logged == pytest.approx(float((pred == y).float().mean()), abs=1e-6)

    # Resume the DDP run from its checkpoint.
    run_cli(
        tmp_path,
        *common,
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "trainer.max_steps=9",
        "model.scheduler=null",
    )
    runs = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    resumed_rows = metric_rows(runs[-1])
    steps = sorted({s for s, _ in column(resumed_rows, "train/loss")})
    assert (
        steps and steps[0] >= 6 and steps[-1] >= 8
    )  # continued after step 6 (not from 0) towards max_steps=9
    resumed = torch.load(runs[-1] / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] > step


def test_detector_ddp_cpu_two_processes(tmp_path):
    args = [
        "experiment=detection_focal",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "debug=fast",
        "threads=1",
        "+callbacks.ddp_check._target_=lightning_focal.callbacks.DistributedConsistencyCheck",
        "data.num_train=64",
        "data.batch_size=4",
        "loss.normalization=batch",
        "test=false",
    ]
    run_cli(tmp_path, *args)
    (run,) = sorted((tmp_path / "logs" / "detection_focal" / "runs").iterdir())
    rows = metric_rows(run)
    assert all(v == 0.0 for _, v in column(rows, "ddp/focal_spread"))
    # The batch normaliser is the mean over the ranks of each rank's positives, clamped to
    # >= 1: DistributedConsistencyCheck gathers every rank's count (ddp/positives_mean) and
    # checks that all ranks divided by the same number (ddp/normalizer_spread == 0).
    normalizer = dict(column(rows, "focal/normalizer"))
    mean = dict(column(rows, "ddp/positives_mean"))
    positives = dict(column(rows, "focal/num_positives"))  # rank 0's own count
    assert normalizer and set(normalizer) == set(mean)
    for s in normalizer:
        assert normalizer[s] == pytest.approx(max(1.0, mean[s]), rel=1e-6)
    assert all(v == 0.0 for _, v in column(rows, "ddp/normalizer_spread"))
    # the ranks saw different images: rank 0's own count is not the mean at every step
    assert any(abs(mean[s] - positives[s]) > 1e-6 for s in mean if s in positives)
    assert "val/map" in rows[0] or any(r.get("val/map") for r in rows)
