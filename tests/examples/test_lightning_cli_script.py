"""``examples/lightning_cli.py`` driven as a user drives it: fit, resume, validate, test.

Why this failed before: the mixin used to record the loss settings in
``self.hparams["focal_loss"]``. ``LightningCLI`` with ``--ckpt_path`` feeds a checkpoint's
``hyper_parameters`` back into the ``model.*`` init arguments (``LightningCLI._parse_ckpt_path``,
Lightning PR #21116), and ``focal_loss`` is no ``__init__`` argument, so every subcommand given
``--ckpt_path`` stopped with "Parsing of ckpt_path hyperparameters failed!" (exit code 2).
``test_ckpt_path_refuses_a_non_init_hparam`` replays that path with a model that stores such
a key; the mixin now stores nothing in ``hparams`` and γ/α travel in the state dict.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_focal.schedules import LinearRamp

pytest.importorskip("jsonargparse")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "lightning_cli.py"
CONFIG = ROOT / "examples" / "lightning_cli.yaml"


def load_example():
    spec = importlib.util.spec_from_file_location("lightning_cli_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def warmup_schedule() -> LinearRamp:
    """The γ schedule the YAML configures, built independently of the CLI."""
    callbacks = yaml.safe_load(CONFIG.read_text())["trainer"]["callbacks"]
    [node] = [c for c in callbacks if c["class_path"].endswith(".GammaWarmup")]
    assert node["init_args"]["schedule"]["class_path"].endswith(".LinearRamp")
    return LinearRamp(**node["init_args"]["schedule"]["init_args"])


def test_config_sets_no_num_classes_and_checkpoints_last():
    text = CONFIG.read_text()
    assert "num_classes:" not in text
    callbacks = yaml.safe_load(text)["trainer"]["callbacks"]
    names = [c["class_path"].rsplit(".", 1)[1] for c in callbacks]
    assert names == ["GammaWarmup", "ClassBalancedAlpha", "FocalBiasInit", "ModelCheckpoint"]
    assert callbacks[-1]["init_args"]["save_last"] is True


def test_hparams_are_exactly_the_init_arguments():
    module = load_example()
    model = module.LitClassifier(gamma=1.0)
    init_args = set(inspect.signature(module.LitClassifier.__init__).parameters) - {"self"}
    assert set(model.hparams) == init_args  # what --ckpt_path feeds back must be accepted
    assert "focal_loss" not in model.hparams


def test_ckpt_path_refuses_a_non_init_hparam(tmp_path, capsys, monkeypatch):
    """In process: the old mixin's ``hparams["focal_loss"]`` breaks ``validate --ckpt_path``;
    the same run without it validates from the checkpoint."""
    from lightning.pytorch.cli import LightningCLI

    module = load_example()
    monkeypatch.setattr(sys, "argv", [str(SCRIPT)])  # the CLI's arguments are `args`, not pytest's

    class OldStyleClassifier(module.LitClassifier):
        def __init__(
            self,
            num_features: int = 8,
            num_classes: int = 3,
            hidden: int = 32,
            gamma: float = 2.0,
            lr: float = 0.05,
        ) -> None:
            super().__init__(num_features, num_classes, hidden, gamma, lr)
            self.hparams["focal_loss"] = {"gamma": gamma, "alpha": None}  # as the mixin did

    def run(model_class, root: Path, *args: str) -> LightningCLI:
        common = ["--config", str(CONFIG), "--trainer.default_root_dir", str(root)]
        return LightningCLI(
            model_class,
            module.BlobsDataModule,
            save_config_kwargs={"overwrite": True},
            args=[args[0], *common, *args[1:]],
        )

    for model_class, root in (
        (OldStyleClassifier, tmp_path / "old"),
        (module.LitClassifier, tmp_path / "new"),
    ):
        run(model_class, root, "fit", "--trainer.max_steps", "8", "--trainer.logger", "false")
    [old_ckpt] = (tmp_path / "old").rglob("last.ckpt")
    [new_ckpt] = (tmp_path / "new").rglob("last.ckpt")

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(OldStyleClassifier, tmp_path / "old", "validate", "--ckpt_path", str(old_ckpt))
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "Parsing of ckpt_path hyperparameters failed!" in err and "focal_loss" in err

    cli = run(module.LitClassifier, tmp_path / "new", "validate", "--ckpt_path", str(new_ckpt))
    assert "val/acc" in cli.trainer.callback_metrics
    saved_gamma = torch.load(new_ckpt, weights_only=True)["state_dict"]["focal_loss.gamma"]
    assert float(cli.model.focal_loss.gamma) == float(saved_gamma) != 2.0


def run_script(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the checkout under test, not an install
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_fit_resume_validate_test_print_config_as_a_user(tmp_path):
    config = ("--config", str(CONFIG))
    run_script(tmp_path, "fit", *config, "--trainer.max_steps", "8")
    first = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(first, weights_only=True)["global_step"] == 8

    resumed = run_script(
        tmp_path, "fit", *config, "--ckpt_path", str(first), "--trainer.max_steps", "16"
    )
    assert "Restored all states from the checkpoint" in resumed.stderr + resumed.stdout
    last = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 16  # continued from 8, not restarted
    # γ of the last batch (step 15), the schedule's value: the warmup continued, not restarted
    assert float(checkpoint["state_dict"]["focal_loss.gamma"]) == pytest.approx(
        warmup_schedule()(15, 16)
    )
    assert checkpoint["state_dict"]["focal_loss.alpha"].shape == (3,)  # ClassBalancedAlpha
    assert "focal_loss" not in checkpoint["hyper_parameters"]

    validated = run_script(tmp_path, "validate", *config, "--ckpt_path", str(last))
    assert "val/acc" in validated.stdout
    tested = run_script(tmp_path, "test", *config, "--ckpt_path", str(last))
    assert "test/acc" in tested.stdout

    printed = yaml.safe_load(run_script(tmp_path, "fit", *config, "--print_config").stdout)
    assert printed["model"]["gamma"] == 2.0
    assert any(c["class_path"].endswith("GammaWarmup") for c in printed["trainer"]["callbacks"])
