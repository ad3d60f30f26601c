"""Exact resume through the app: a resumed run is the uninterrupted run, bit for bit.

The app (``lightning_focal.train.train`` on a composed config, as ``lightning-focal-train``
runs it) trains 10 steps of the default job (digits_lt, focal + class-balanced α, γ warmup,
OneCycleLR) on the CPU with ``trainer.deterministic=true`` and saves a checkpoint after
every step. Resuming from a checkpoint in a fresh run dir with the same config must give
the same batches after the resume point and bitwise-equal final weights, optimiser state,
γ and α. Four batches make an epoch, so step 6 is mid-epoch (epoch 1), step 8 an epoch
boundary and step 2 mid-warmup (the γ ramp covers the first 5 steps) in epoch 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback

from lightning_focal.app_utils import config_dir
from lightning_focal.data import DigitsLTDataModule
from lightning_focal.train import train

MAX_STEPS = 10
STEPS_PER_EPOCH = 4  # 254 long-tailed training digits in batches of 64


class BatchRecorder(Callback):
    """Appends one JSON line per training batch: step, epoch, targets and a hash of the images.

    Used as a config node (``+callbacks.batches._target_=test_resume.BatchRecorder``).
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        images, targets = batch
        if isinstance(targets, list):  # detection: one dict of boxes and labels per image
            targets = [t["labels"].tolist() for t in targets]
        else:
            targets = targets.tolist()
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "targets": targets,
            "images": hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest(),
        }
        path = self.path
        if trainer.world_size > 1:  # one file per rank
            path = path.with_suffix(f".rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as file:
            file.write(json.dumps(record) + "\n")


CLASSIFIER = (
    "data.batch_size=64",
    "data.image_size=16",
    "callbacks.gamma_warmup.schedule.fraction=0.5",
    "model.scheduler.pct_start=0.3",
)
# shapes: 32 images in batches of 8 (4 an epoch), RetinaNet; items are pure functions of (seed, index)
DETECTOR = (
    "experiment=detection",
    "data.num_train=32",
    "data.num_val=8",
    "data.batch_size=8",
    "callbacks.detection_samples=null",
    "callbacks.model_checkpoint.monitor=null",
    "model.scheduler.pct_start=0.3",
)


def overrides(output_dir: Path, *extra: str, base: tuple[str, ...] = CLASSIFIER) -> list[str]:
    return [
        *base,
        f"paths.output_dir={output_dir}",
        "threads=1",
        "test=false",
        "logger=none",
        "trainer=cpu",
        "trainer.deterministic=true",
        f"trainer.max_steps={MAX_STEPS}",
        "trainer.check_val_every_n_epoch=1",
        "+trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "+trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        "callbacks.focal_plots=null",
        "callbacks.learning_rate_monitor=null",
        "+callbacks.every_step._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        "+callbacks.every_step.dirpath=${paths.output_dir}/every_step",
        "+callbacks.every_step.filename='s{step:02d}'",
        "+callbacks.every_step.auto_insert_metric_name=false",
        "+callbacks.every_step.every_n_train_steps=1",
        "+callbacks.every_step.save_top_k=-1",
        "+callbacks.batches._target_=test_resume.BatchRecorder",
        "+callbacks.batches.path=${paths.output_dir}/batches.jsonl",
        *extra,
    ]


def run_app(output_dir: Path, *extra: str, base: tuple[str, ...] = CLASSIFIER) -> dict[str, float]:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides(output_dir, *extra, base=base))
    return train(cfg)


def batches(output_dir: Path, name: str = "batches.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output_dir / name).read_text().splitlines()]


def final_state(output_dir: Path) -> dict[str, Any]:
    return torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=False)


def tensor_diffs(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two nested checkpoint structures differ; tensors compared bitwise."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return [f"{where}: {type(a).__name__} vs {type(b).__name__}"]
        if a.shape != b.shape or a.dtype != b.dtype:
            return [f"{where}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"]
        if torch.equal(a, b):
            return []
        if a.is_floating_point():
            return [f"{where}: max |diff| {(a - b).abs().max().item():.3g}"]
        return [f"{where}: differs"]
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: missing on one side" for k in a.keys() ^ b.keys()]
        for key in a.keys() & b.keys():
            out += tensor_diffs(a[key], b[key], f"{where}.{key}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [
            d for i, (x, y) in enumerate(zip(a, b)) for d in tensor_diffs(x, y, f"{where}[{i}]")
        ]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    run_app(output_dir)
    return output_dir


def test_the_uninterrupted_run_has_the_planned_shape(uninterrupted: Path) -> None:
    seen = batches(uninterrupted)
    assert [r["step"] for r in seen] == list(range(MAX_STEPS))
    assert [r["epoch"] for r in seen] == [s // STEPS_PER_EPOCH for s in range(MAX_STEPS)]
    # every epoch sees every training image once, in a new order
    epochs = [[t for r in seen if r["epoch"] == e for t in r["targets"]] for e in (0, 1)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]
    assert len(epochs[0]) == 254
    state = final_state(uninterrupted)
    assert state["global_step"] == MAX_STEPS
    names = sorted(p.name for p in (uninterrupted / "every_step").iterdir())
    assert names == [f"s{s:02d}.ckpt" for s in range(1, MAX_STEPS + 1)]


@pytest.mark.parametrize(
    ("step", "where"),
    [(6, "mid-epoch"), (8, "epoch boundary"), (2, "mid γ-warmup")],
)
def test_resume_is_the_uninterrupted_run(
    uninterrupted: Path, tmp_path: Path, step: int, where: str
) -> None:
    checkpoint = uninterrupted / "every_step" / f"s{step:02d}.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["global_step"] == step
    (gamma,) = [v for k, v in saved["state_dict"].items() if k.endswith("loss.gamma")]
    if where == "mid γ-warmup":
        assert 0.0 < float(gamma) < 2.0, gamma
    run_app(tmp_path, f"ckpt_path={checkpoint}")

    ours, theirs = final_state(tmp_path), final_state(uninterrupted)
    assert ours["global_step"] == theirs["global_step"] == MAX_STEPS
    diffs = tensor_diffs(ours["state_dict"], theirs["state_dict"], "state_dict")
    diffs += tensor_diffs(ours["optimizer_states"], theirs["optimizer_states"], "optimizer")
    expected = [r for r in batches(uninterrupted) if r["step"] >= step]
    seen = batches(tmp_path)
    same = [a == b for a, b in zip(seen, expected)]
    summary = f"{len(diffs)} tensors differ, e.g. {diffs[:3]}"
    assert seen == expected, f"{where}: batches after the resume equal: {same}; {summary}"
    assert not diffs, f"{where}: {summary}"
    # γ and α are buffers of the loss, so they are in the state dict; named here for the reader
    names = [k for k in theirs["state_dict"] if k.endswith(("loss.gamma", "loss.alpha"))]
    assert len(names) == 2, names
    for name in names:
        assert torch.equal(ours["state_dict"][name], theirs["state_dict"][name]), name


DDP = ("trainer=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=32")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ddp_resume_is_the_uninterrupted_run(tmp_path: Path) -> None:
    """Two CPU ranks (ddp_spawn), each with its own share (127 digits, 4 batches of 32);
    resumed mid-epoch (step 6) and at an epoch boundary (step 8)."""
    full = tmp_path / "full"
    run_app(full, *DDP)
    shares = []
    for rank in (0, 1):
        seen = batches(full, f"batches.rank{rank}.jsonl")
        assert [r["step"] for r in seen] == list(range(MAX_STEPS))
        shares.append([t for r in seen if r["epoch"] == 0 for t in r["targets"]])
    # the ranks split the epoch: 127 images each, 254 together (no padding)
    assert len(shares[0]) == len(shares[1]) == 127
    counts = DigitsLTDataModule(seed=0).class_counts().tolist()
    assert sorted(shares[0] + shares[1]) == [c for c, n in enumerate(counts) for _ in range(n)]
    for step in (6, 8):
        resumed = tmp_path / f"resumed_{step}"
        run_app(resumed, *DDP, f"ckpt_path={full / 'every_step' / f's{step:02d}.ckpt'}")
        for rank in (0, 1):
            name = f"batches.rank{rank}.jsonl"
            expected = [r for r in batches(full, name) if r["step"] >= step]
            assert batches(resumed, name) == expected, (step, rank)
        ours, theirs = final_state(resumed), final_state(full)
        diffs = tensor_diffs(ours["state_dict"], theirs["state_dict"], "state_dict")
        diffs += tensor_diffs(ours["optimizer_states"], theirs["optimizer_states"], "optimizer")
        assert ours["global_step"] == MAX_STEPS and not diffs, (step, diffs[:3])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_detection_resume_is_the_uninterrupted_run(tmp_path: Path) -> None:
    """RetinaNet on shapes (no augmentation: an item depends on (seed, index) only), resumed
    mid-epoch."""
    full, resumed, step = tmp_path / "full", tmp_path / "resumed", 6
    run_app(full, base=DETECTOR)
    run_app(resumed, f"ckpt_path={full / 'every_step' / f's{step:02d}.ckpt'}", base=DETECTOR)
    seen = batches(full)
    assert [r["epoch"] for r in seen] == [s // STEPS_PER_EPOCH for s in range(MAX_STEPS)]
    assert batches(resumed) == [r for r in seen if r["step"] >= step]
    ours, theirs = final_state(resumed), final_state(full)
    diffs = tensor_diffs(ours["state_dict"], theirs["state_dict"], "state_dict")
    diffs += tensor_diffs(ours["optimizer_states"], theirs["optimizer_states"], "optimizer")
    assert ours["global_step"] == MAX_STEPS and not diffs, diffs[:3]


# ---- resuming in the same run dir: the same wandb run; ckpt_path=last says when it has nothing


def run_cli(cwd: Path, *args: str) -> str:
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "LIGHTNING_FOCAL_ROOT": str(cwd),
        "WANDB_MODE": "offline",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(root), str(root / "tests"), os.environ.get("PYTHONPATH")])
        ),
    }
    env.pop("WANDB_RUN_ID", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_focal.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    return output


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resume_in_the_run_dir_continues_the_wandb_run(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    run = tmp_path / "logs" / "train" / "runs" / "requeued"
    args = [
        "debug=fast",
        "threads=1",
        "test=false",
        "logger=wandb",
        "schedule=none",
        "model.scheduler=null",
        "callbacks.focal_plots=null",
        f"hydra.run.dir={run}",
        "ckpt_path=last",
    ]
    first = run_cli(tmp_path, *args, "trainer.max_steps=3")
    # nothing to resume (the first job of a requeued run): said in one line, then from step 0
    nothing = f"ckpt_path=last: nothing to resume (no last*.ckpt in ['{run / 'checkpoints'}'])"
    assert f"{nothing}: training starts from step 0" in first
    run_id = (run / "wandb_run_id").read_text()
    assert len(run_id) == 8
    second = run_cli(tmp_path, *args, "trainer.max_steps=6")
    assert "nothing to resume" not in second and "Restored all states" in second
    offline = sorted((run / "wandb").glob("offline-run-*"))
    # one offline dir per start, both of the one wandb run (`wandb sync` appends them)
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline), offline
    assert (run / "wandb_run_id").read_text() == run_id
    # a new run dir is a new wandb run
    other = tmp_path / "logs" / "train" / "runs" / "other"
    run_cli(tmp_path, *args[:-2], f"hydra.run.dir={other}", "trainer.max_steps=1")
    assert (other / "wandb_run_id").read_text() != run_id
