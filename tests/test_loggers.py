"""ResumableCSVLogger: a resumed run continues metrics.csv instead of deleting it."""

from __future__ import annotations

import csv

from lightning_focal.loggers import ResumableCSVLogger


def write(root, rows):
    logger = ResumableCSVLogger(root, name="csv", version=0)
    logger.log_hyperparams({"lr": 0.1})
    for step, metrics in rows:
        logger.log_metrics(metrics, step=step)
    logger.save()
    with open(f"{logger.log_dir}/metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_resume_keeps_earlier_rows_before_its_first_step_and_adds_columns(tmp_path):
    write(tmp_path, [(s, {"train/loss": float(s)}) for s in range(5)] + [(4, {"val/acc": 0.5})])
    # resumed from a checkpoint at step 3: steps 3-4 of the first run are redone
    rows = write(tmp_path, [(s, {"train/loss": 10.0 + s, "focal/gamma": 2.0}) for s in (3, 4, 5)])
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4, 5]
    assert set(rows[0]) == {"step", "train/loss", "val/acc", "focal/gamma"}
    assert [float(r["train/loss"]) for r in rows] == [0.0, 1.0, 2.0, 13.0, 14.0, 15.0]
    assert rows[0]["focal/gamma"] == "" and rows[-1]["focal/gamma"] == "2.0"


def test_a_fresh_run_in_the_same_dir_replaces_the_rows(tmp_path):
    write(tmp_path, [(s, {"train/loss": 1.0}) for s in range(4)])
    rows = write(tmp_path, [(s, {"train/loss": 2.0}) for s in range(2)])
    assert [(int(r["step"]), float(r["train/loss"])) for r in rows] == [(0, 2.0), (1, 2.0)]


# ---- ResumableWandbLogger: one wandb run per run dir -----------------------------------------


def test_wandb_run_id_is_kept_in_the_run_dir(tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    from lightning_focal.loggers import ResumableWandbLogger

    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    run_dir, other_dir = tmp_path / "run", tmp_path / "other"
    first = ResumableWandbLogger(save_dir=run_dir, offline=True)
    assert (run_dir / "wandb_run_id").read_text() == first.version
    assert first._wandb_init["id"] == first.version and first._wandb_init["resume"] == "allow"
    # a resume in the same run dir continues the run; another run dir starts a new one
    assert ResumableWandbLogger(save_dir=run_dir, offline=True).version == first.version
    assert ResumableWandbLogger(save_dir=other_dir, offline=True).version != first.version
    # Lightning's own logger makes no id: every start would be a new wandb run
    assert WandbLogger(save_dir=run_dir, offline=True).version is None
    # an id the user gives wins, and nothing is written
    assert ResumableWandbLogger(save_dir=tmp_path / "given", id="mine").version == "mine"
    monkeypatch.setenv("WANDB_RUN_ID", "fromenv")
    assert ResumableWandbLogger(save_dir=tmp_path / "env").version is None  # wandb reads the env
    assert not (tmp_path / "given").exists() and not (tmp_path / "env").exists()


def test_stable_run_id_refuses_an_empty_file(tmp_path):
    import pytest

    from lightning_focal.loggers import stable_run_id

    (tmp_path / "wandb_run_id").write_text("")
    with pytest.raises(
        ValueError, match="wandb_run_id is empty: delete it, or give the logger an id"
    ):
        stable_run_id(tmp_path)
