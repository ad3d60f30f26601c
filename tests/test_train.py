"""The Hydra app: every config composes and names real constructor arguments; the CLI runs."""

from __future__ import annotations

import csv
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

hydra = pytest.importorskip("hydra")
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402
from hydra.utils import get_class, instantiate  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402

from lightning_focal.app_utils import (  # noqa: E402
    CONFIG_NODES,
    SETTINGS,
    check_config,
    config_dir,
    instantiate_callbacks,
)

CONF = Path(config_dir())
ROOT = Path(__file__).resolve().parents[1]
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_with(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def check_target(node, where: str) -> None:
    """The node's _target_ imports and accepts every key the node gives."""
    target = get_class(node["_target_"]) if "." in node["_target_"] else None
    assert target is not None, where
    params = inspect.signature(target).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in node if not k.startswith("_") and k not in params]
    assert not unknown, f"{where}: {target.__name__} has no parameters {unknown}"


def test_groups_are_the_documented_ones():
    assert set(GROUPS) >= {
        "data",
        "model",
        "loss",
        "schedule",
        "callbacks",
        "trainer",
        "logger",
        "paths",
        "hydra",
        "debug",
        "experiment",
    }


def test_every_config_file_opens_with_a_comment():
    for path in CONF.rglob("*.yaml"):
        first = path.read_text().splitlines()[0]
        if first.startswith("# @package"):
            first = path.read_text().splitlines()[1]
        assert first.startswith("# ") and len(first) > 10, path


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS if g not in ("hydra", "paths") for o in options(g)]
)
def test_every_option_composes_and_targets_exist(group, option):
    overrides = [f"{group}={option}"]
    if group == "loss" and option == "focal_alpha":
        overrides.append(f"loss.alpha=[{','.join(['1.0'] * 10)}]")
    cfg = compose_with(*overrides)
    container = OmegaConf.to_container(cfg, resolve=False)
    assert {"data", "model", "loss", "trainer", "paths", "callbacks"} <= set(container)
    for key in ("data", "model", "loss", "trainer"):
        check_target(cfg[key], f"{group}={option}: {key}")
    for kind in ("callbacks", "logger"):
        for name, node in (cfg.get(kind) or {}).items():
            if node is not None:
                check_target(node, f"{group}={option}: {kind}.{name}")
    check_config(cfg)  # what the app checks before it builds anything
    OmegaConf.resolve(cfg.loss)
    OmegaConf.resolve(cfg.model)


def test_experiments_select_their_loss_and_schedule():
    cfg = compose_with("experiment=imbalance_ce")
    assert cfg.loss.gamma == 0.0 and cfg.loss.alpha is None
    assert not {"class_balanced_alpha", "gamma_warmup"} & set(cfg.callbacks)
    cfg = compose_with("experiment=imbalance_focal_cb_warmup")
    assert cfg.loss.gamma == 2.0 and cfg.callbacks.class_balanced_alpha.method == "effective_number"
    assert cfg.callbacks.gamma_warmup.schedule._target_.endswith("LinearRamp")
    assert cfg.task_name == "imbalance_focal_cb_warmup"


def test_long_tail_arms_are_one_experiment_word_each():
    from hydra.utils import instantiate

    from lightning_focal.app_utils import check_config

    # logit-adjusted CE / focal: τ=1 on the loss, priors filled by the callback (no α)
    for name, gamma in (("imbalance_la_ce", 0.0), ("imbalance_la_focal", 2.0)):
        cfg = compose_with(f"experiment={name}")
        check_config(cfg)
        model = built_model(cfg, num_classes=10)
        assert model.focal_loss.logit_adjustment == 1.0 and float(model.focal_loss.gamma) == gamma
        assert model.focal_loss.class_priors is None and model.focal_loss.alpha is None
        callback = instantiate(cfg.callbacks.class_balanced_alpha)
        assert callback.alpha is False and callback.priors is True
        assert "gamma_warmup" not in cfg.callbacks
    # focal + DRW: class-balanced α switched on at 80 % of the steps
    cfg = compose_with("experiment=imbalance_focal_drw")
    check_config(cfg)
    callback = instantiate(cfg.callbacks.class_balanced_alpha)
    assert callback.start == 0.8 and callback.alpha is True
    # a detector's loss has no logit adjustment: refused before anything runs, naming the key
    with pytest.raises(Exception, match=r"loss\.logit_adjustment"):
        check_config(compose_with("experiment=detection", "loss=la_ce"))


def test_detection_experiments_use_retinanet_and_fcos_the_exp_box_head():
    from torchvision.models.detection import RetinaNet

    from lightning_focal.models import FCOSExpRegressionHead

    for name in options("experiment"):
        if name.startswith("detection"):
            cfg = compose_with(f"experiment={name}")
            assert cfg.model.detector._target_.endswith("retinanet"), name
            fcos = compose_with(f"experiment={name}", "model=fcos")
            assert fcos.model.detector.box_activation == "exp", name
    assert isinstance(built_model(compose_with("experiment=detection")).detector, RetinaNet)
    model = built_model(compose_with("experiment=detection", "model=fcos"))
    assert isinstance(model.detector.head.regression_head, FCOSExpRegressionHead)


@pytest.mark.parametrize("model", ["retinanet", "fcos", "timm_classifier"])
@pytest.mark.parametrize(
    ("choice", "optimizer", "lr"),
    [(None, "AdamW", 0.003), ("adamw", "AdamW", 0.003), ("sgd", "SGD", 0.01)],
)
def test_optimizer_is_one_config_choice(model, choice, optimizer, lr):
    """Before: the detectors' AdamW was written into each model file; SGD (RetinaNet's
    optimiser, under which mean-BCE collapses) took a hand-written node."""
    overrides = [f"model={model}", "trainer.max_steps=50"]
    if model != "timm_classifier":
        overrides.insert(0, "experiment=detection")
    if choice is not None:
        overrides.append(f"optimizer={choice}")
    cfg = compose_with(*overrides)
    check_config(cfg)
    configured = built_model(cfg).configure_optimizers()
    built, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert type(built).__name__ == optimizer
    assert built.param_groups[0]["max_lr"] == pytest.approx(lr)
    assert scheduler.total_steps == 50
    if optimizer == "SGD":
        assert built.defaults["momentum"] == 0.9 and built.defaults["weight_decay"] == 1e-4
    if model == "timm_classifier":
        return
    # detectors: the lr warms up from lr/25, peaks early and anneals to ~0 by the last step
    assert built.param_groups[0]["initial_lr"] == pytest.approx(lr / 25)
    lrs = []
    for _ in range(50):
        lrs.append(built.param_groups[0]["lr"])
        built.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(lr / 25) and max(lrs) == pytest.approx(lr)
    assert lrs.index(max(lrs)) <= 5 and lrs[-1] < lr / 100


def test_bce_mean_experiment_is_the_seeds_baseline_under_sgd():
    cfg = compose_with("experiment=detection_bce_mean")
    assert cfg.model.optimizer._target_ == "torch.optim.SGD" and cfg.model.optimizer.momentum == 0.9
    assert cfg.loss.gamma == 0.0 and cfg.loss.alpha is None
    assert cfg.loss.normalization == "mean" and cfg.model.detector.prior_probability is None
    # everything else is the default run's
    default = compose_with("experiment=detection")
    ours = OmegaConf.to_container(cfg.model, resolve=False)
    theirs = OmegaConf.to_container(default.model, resolve=False)
    for key in ("aspect_ratios", "anchor_sizes", "out_indices", "fpn_channels"):
        assert ours["detector"][key] == theirs["detector"][key], key
    # unresolved: the schedule's peak is ${model.optimizer.lr}, SGD's own
    assert ours["scheduler"] == theirs["scheduler"]
    assert cfg.data == default.data and cfg.trainer.max_steps == default.trainer.max_steps


@pytest.mark.parametrize("name", ["detection", "detection_focal_noprior", "detection_bce_mean"])
@pytest.mark.parametrize("model", ["fcos", "retinanet"])
def test_detection_configs_set_the_prior_through_the_detector_only(name, model):
    import math

    from lightning_focal.models import DenseDetector

    cfg = compose_with(f"experiment={name}", f"model={model}")
    check_config(cfg)
    assert cfg.model._target_ == "lightning_focal.models.DenseDetector"
    assert cfg.model.detector._target_ == f"lightning_focal.models.{model}"
    assert "prior_bias_init" not in str(OmegaConf.to_yaml(cfg))  # one mechanism
    assert not any(
        "FocalBiasInit" in str(node.get("_target_")) for node in cfg.callbacks.values() if node
    )
    built = built_model(cfg, num_classes=5)  # num_classes reaches the nested detector node
    assert isinstance(built, DenseDetector) and built.num_classes == 5
    assert built.detector.head.classification_head.num_classes == 5
    bias = built.detector.head.classification_head.cls_logits.bias
    expected = 0.0 if "noprior" in name or "mean" in name else -math.log(99)
    torch_testing = pytest.importorskip("torch").testing
    torch_testing.assert_close(bias, bias.new_full(bias.shape, expected))


def test_unknown_detector_keys_are_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"unknown config key model\.detector\.anchor_size:"):
        check_config(
            compose_with(
                "experiment=detection", "model=retinanet", "+model.detector.anchor_size=[8]"
            )
        )
    with pytest.raises(ValueError, match=r"unknown config key model\.prior_bias_init"):
        check_config(compose_with("experiment=detection", "+model.prior_bias_init=true"))


def test_retinanet_config_anchors_fit_the_shapes_objects():
    # torchvision's 32-512 anchors on P3-P7 gave no shapes object an anchor at IoU >= 0.5
    # (only low-quality matches) and RetinaNet barely learned; the config's must give them.
    import torch
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import box_iou

    from lightning_focal.data import ShapesDataset

    cfg = compose_with("experiment=detection", "model=retinanet")
    model = built_model(cfg).detector
    assert isinstance(model.head.classification_head.conv[0][1], torch.nn.GroupNorm)
    images = torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size)
    features = list(model.backbone(images).values())
    image_list = ImageList(images, [tuple(images.shape[-2:])])
    anchors = model.anchor_generator(image_list, features)[0]
    data = ShapesDataset(
        64,
        seed=0,
        image_size=cfg.data.image_size,
        min_size=cfg.data.min_size,
        max_size=cfg.data.max_size,
    )
    best_iou = torch.cat([box_iou(data[i][1]["boxes"], anchors).amax(1) for i in range(len(data))])
    assert (best_iou >= cfg.model.detector.bg_iou_thresh).all()
    assert (best_iou >= cfg.model.detector.fg_iou_thresh).float().mean() >= 0.95


def test_default_config_is_the_documented_job():
    cfg = compose_with()
    assert cfg.data._target_.endswith("DigitsLTDataModule") and cfg.data.imbalance_ratio == 100.0
    assert cfg.model.model_name == "test_resnet" and cfg.model.pretrained is False
    assert cfg.loss._target_ == "lightning_focal.SoftmaxFocalLoss" and cfg.loss.gamma == 2.0
    assert cfg.callbacks.class_balanced_alpha._target_.endswith("ClassBalancedAlpha")
    assert cfg.callbacks.gamma_warmup.schedule._target_.endswith("LinearRamp")
    assert cfg.optimized_metric == "val/balanced_acc"
    assert list(cfg.logger) == ["csv"]
    # the top-level keys are the ones the app reads (check_config refuses any other)
    assert set(cfg) - {"hydra"} == set(CONFIG_NODES) | set(SETTINGS)


def readme_commands() -> list[list[str]]:
    """The overrides of every app command in README.md (sweeps, ``-m``, left out)."""
    text = (ROOT / "README.md").read_text()
    found = re.findall(
        r"(?:lightning-focal-train|-m lightning_focal\.train)((?: +[^\s`#|]+)*)", text
    )
    commands = [args.split() for args in found if "-m" not in args.split()]
    # <run>-style placeholders stand for a value the reader fills in
    unique = {tuple(re.sub(r"<[^>]+>", "x", a) for a in args if "=" in a) for args in commands}
    return sorted(list(args) for args in unique)


@pytest.mark.parametrize("overrides", readme_commands(), ids=lambda o: " ".join(o) or "default")
def test_readme_commands_compose_and_pass_the_checks(overrides):
    assert len(readme_commands()) >= 10
    check_config(compose_with(*overrides))


def test_slurm_job_id_keys_the_run_dir(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    cfg = compose_with()
    assert cfg.hydra.run.dir.endswith("runs/4242")


# ---- config decides: every setting reaches what it names, or is refused -------------------


@pytest.fixture
def run_config(tmp_path):
    """Compose like the app does (run dir = tmp_path): ``train(run_config(...))`` runs in-process."""
    from hydra.core.hydra_config import HydraConfig

    def make(*overrides: str):
        cfg = compose_with(*overrides)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path)
        HydraConfig.instance().set_config(cfg)  # what ${hydra:runtime.output_dir} reads
        return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])

    yield make
    HydraConfig.instance().cfg = None


def built_model(cfg, num_classes: int = 3):
    """The model as the app builds it: what the config leaves open comes from the data."""
    from types import SimpleNamespace

    from lightning_focal.app_utils import data_kwargs_for

    data = SimpleNamespace(num_classes=num_classes, class_names=None, image_size=None)
    return instantiate(cfg.model, _convert_="all", **data_kwargs_for(cfg.model, data))


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("loss", ["ce", "focal", "poly1", "flsd53", "focal_alpha"])
def test_every_loss_option_reaches_every_model(model, loss):
    overrides = [f"model={model}", f"loss={loss}"]
    if loss == "focal_alpha":
        overrides.append("loss.alpha=[0.2,0.3,0.5]")
    cfg = compose_with(*overrides)
    built = built_model(cfg)
    assert f"lightning_focal.{type(built.focal_loss).__name__}" == cfg.loss._target_
    recorded = built.hparams["loss"]  # read back from the module, as checkpoints keep it
    for key, value in OmegaConf.to_container(cfg.loss).items():
        assert recorded[key] == pytest.approx(value), (model, loss, key)


def test_detection_experiment_takes_poly1_and_alpha():
    """Before: model=fcos/retinanet read loss.gamma only: poly1 and α never reached them."""
    model = built_model(compose_with("experiment=detection", "loss=poly1"))
    assert model.focal_loss.poly1 == 1.0
    cfg = compose_with("experiment=detection", "loss=focal_alpha", "loss.alpha=[0.1,0.2,0.7]")
    assert built_model(cfg).focal_loss.alpha.tolist() == pytest.approx([0.1, 0.2, 0.7])
    # loss=focal means each family's focal loss: RetinaNet's α=0.25 on a detector, none on a classifier
    assert float(built_model(compose_with("experiment=detection")).focal_loss.alpha) == 0.25
    assert built_model(compose_with("loss=focal")).focal_loss.alpha is None
    # the detection arms set what they say on the loss node
    mean = built_model(compose_with("experiment=detection_bce_mean")).focal_loss
    assert mean.normalization == "mean" and float(mean.gamma) == 0.0 and mean.alpha is None


def test_focal_alpha_needs_alpha():
    # OmegaConf's ??? would have kept the model's α=None (a ??? merged onto a value is ignored)
    with pytest.raises(ValueError, match=r"loss\.alpha has no value: loss=focal_alpha needs α"):
        check_config(compose_with("loss=focal_alpha"))


def test_an_option_the_loss_class_does_not_take_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException, match=r"loss\.label_smoothing"):
        compose_with("experiment=detection", "loss.label_smoothing=0.1")
    message = "unknown config key loss.label_smoothing: DenseFocalLoss takes no argument"
    with pytest.raises(ValueError, match=re.escape(message)):
        check_config(compose_with("experiment=detection", "+loss.label_smoothing=0.1"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+loss.gama=2",
            "unknown config key loss.gama: SoftmaxFocalLoss takes no argument 'gama' "
            "(did you mean 'gamma'?)",
        ),
        ("+model.gama=2", "unknown config key model.gama: TimmClassifier takes no argument"),
        ("+model.optimizer.learning_rate=0.1", "unknown config key model.optimizer.learning_rate"),
        ("+callbacks.gamma_warmup.schedule.step=3", "callbacks.gamma_warmup.schedule.step: Linear"),
        ("+data.batchsize=8", "unknown config key data.batchsize: DigitsLTDataModule"),
        ("+los.gamma=2", "unknown config key los: the app reads data, model, loss"),
    ],
)
def test_unknown_keys_are_refused_naming_them(override, message):
    """Before: ``+loss.gama=2`` (and any other added key) trained as if nothing was said."""
    from lightning_focal.train import _config_hint, train

    cfg = compose_with(override)
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        train(cfg)  # refused before anything is built
    # the app exits with this one line (`error: ...`), the traceback only in train.log
    assert _config_hint(cfg, refused.value) == str(refused.value)


def test_focal_callbacks_are_nodes_that_schedule_and_loss_set(run_config):
    """Before: GammaWarmup and ClassBalancedAlpha were built in Python from schedule/loss:
    invisible in the composed config and impossible to switch off."""
    from lightning_focal.callbacks import CalibrationGamma, ClassBalancedAlpha, GammaWarmup

    def focal(cfg) -> list[str]:
        kinds = (GammaWarmup, ClassBalancedAlpha, CalibrationGamma)
        callbacks = instantiate_callbacks(cfg.callbacks)
        return sorted(type(cb).__name__ for cb in callbacks if isinstance(cb, kinds))

    cfg = run_config()
    assert cfg.callbacks.gamma_warmup._target_ == "lightning_focal.callbacks.GammaWarmup"
    assert cfg.callbacks.gamma_warmup.schedule.end == 2.0  # ${loss.gamma}
    assert cfg.callbacks.class_balanced_alpha.method == "effective_number"
    assert focal(cfg) == ["ClassBalancedAlpha", "GammaWarmup"]
    assert focal(run_config("callbacks.gamma_warmup=null")) == ["ClassBalancedAlpha"]
    assert focal(run_config("callbacks.class_balanced_alpha=null")) == ["GammaWarmup"]
    assert focal(run_config("loss=focal", "schedule=none")) == []
    assert focal(run_config("callbacks=none")) == ["ClassBalancedAlpha", "GammaWarmup"]

    cfg = run_config("schedule=calibration")
    assert cfg.callbacks.calibration_gamma.monitor == "val/calibration_gap"
    assert focal(cfg) == ["CalibrationGamma", "ClassBalancedAlpha"]
    # FLSD-53's per-sample γ takes no schedule: the loss option picks schedule=none, and an
    # explicit schedule is refused before anything is built
    assert "gamma_warmup" not in run_config("loss=flsd53").callbacks
    for schedule, name in [("linear", "gamma_warmup"), ("calibration", "calibration_gamma")]:
        with pytest.raises(
            ValueError, match=rf"callbacks\.{name} .* cannot set: use schedule=none"
        ):
            check_config(run_config("loss=flsd53", f"schedule={schedule}"))


@pytest.mark.timeout(600)
def test_shapes_with_fcos_validates_on_the_detection_metric(run_config, tmp_path):
    """Before: ``data=shapes model=fcos`` crashed at the first validation: ModelCheckpoint
    monitored val/balanced_acc, which a detector does not log. The model option sets it."""
    from lightning_focal.train import train

    cfg = run_config("data=shapes", "model=fcos", "debug=fast", "data.num_train=32", "test=false")
    assert cfg.optimized_metric == "val/map"
    metrics = train(cfg)
    assert "val/map" in metrics
    saved = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert "last.ckpt" in saved and any(name.startswith("step") for name in saved), saved


@pytest.mark.timeout(600)
def test_calibration_schedule_adapts_gamma_in_a_run(run_config, tmp_path):
    import torch

    from lightning_focal.train import train

    overrides = ["schedule=calibration", "callbacks.calibration_gamma.tolerance=0", "loss=focal"]
    metrics = train(run_config(*overrides, "debug=fast", "test=false"))
    assert "val/calibration_gap" in metrics
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    history = state["callbacks"]["CalibrationGamma"]["gamma_history"]
    assert len(history) == 2  # validations after epochs 1 and 2 of the 6 steps
    assert abs(history[0] - 2.0) == 0.5  # one step up or down from loss.gamma
    assert float(state["state_dict"]["focal_loss.gamma"]) == history[-1]


# ---- the command line, in subprocesses ----------------------------------------------------


def run_cli(tmp_path, *args, env_extra=None, check=True):
    env = {
        **os.environ,
        "LIGHTNING_FOCAL_ROOT": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
        # the checkout under test, not whichever copy of the package is installed
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **(env_extra or {}),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_focal.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def run_dirs(tmp_path, task="train"):
    return sorted((tmp_path / "logs" / task / "runs").iterdir())


@pytest.mark.timeout(900)
def test_cli_default_job_with_debug_config_then_resume(tmp_path):
    proc = run_cli(tmp_path, "debug=fast", "threads=1")
    (run,) = run_dirs(tmp_path)
    # the results once, as Lightning's test table; the run dir named on the console and in
    # train.log, which also holds Lightning's rank-zero info
    assert proc.stdout.count("test/balanced_acc") == 1 and "Test metric" in proc.stdout
    assert f"run dir: {run}" in proc.stdout
    log = (run / "train.log").read_text()
    assert f"run dir: {run}" in log and "Restoring states from the checkpoint path" in log, log
    assert (run / "checkpoints" / "last.ckpt").is_file()
    header = (run / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in (
        "train/loss",
        "focal/gamma",
        "focal/modulating",
        "val/acc",
        "val/balanced_acc",
        "val/ece",
        "test/acc",
    ):
        assert key in header, key
    assert {p.name for p in (run / "plots").glob("*.png")} == {
        "gamma.png",
        "per_class_recall.png",
        "reliability.png",
    }
    # The README's first resume form with a longer run: refused before training, with what to do
    # (OneCycleLR would fail at step 7; γ's 30% ramp would drop from 2.0 back to 1.33)
    refused = run_cli(
        tmp_path,
        "debug=fast",
        "threads=1",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "trainer.max_steps=30",
        check=False,
    )
    message = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Tried to step" not in message
    assert "the checkpoint was trained for 6 steps" in message, message[-3000:]
    assert "its OneCycleLR runs for total_steps=6 (it would fail at step 7)" in message
    assert "would jump from 2.0 to 1.33" in message
    assert "Resume with the same length (trainer.max_steps=6)" in message
    assert len(run_dirs(tmp_path)) == 2 and not (run_dirs(tmp_path)[1] / "checkpoints").exists()
    # Resume through the CLI: training continues from step 6 to 9 (not from 0); nothing here
    # follows the run's length (no scheduler; the γ ramp is over at step 6 either way).
    resumed = run_cli(
        tmp_path,
        "debug=fast",
        "threads=1",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        "trainer.max_steps=9",
        "model.scheduler=null",
    )
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    runs = run_dirs(tmp_path)
    assert len(runs) == 3
    import torch

    state = torch.load(runs[2] / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 9


@pytest.mark.timeout(600)
def test_resume_last_in_the_same_run_dir(tmp_path):
    run = tmp_path / "logs" / "train" / "runs" / "requeued"
    args = ["debug=fast", "threads=1", "test=false", "callbacks.focal_plots=null"]
    args += [f"hydra.run.dir={run}", "ckpt_path=last"]
    # nothing to resume yet (a first SLURM job): it says so and trains from scratch
    first = run_cli(tmp_path, *args, "trainer.max_steps=5")
    output = first.stdout + first.stderr
    assert 'ckpt_path="last") is set, but there is no last checkpoint available' in output
    assert f"ckpt_path=last: looking for the last checkpoint in ['{run / 'checkpoints'}']" in output
    assert "ckpt_path=last: nothing to resume (no last*.ckpt in" in output
    import torch

    # validation ran at step 3 only (3 batches an epoch): last.ckpt still holds step 5
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.ckpt", "step00003.ckpt"}
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    # the same command resumes from last.ckpt (4 more steps) and continues metrics.csv
    resumed = run_cli(tmp_path, *args, "trainer.max_steps=9", "model.scheduler=null")
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr
    assert "nothing to resume" not in resumed.stdout + resumed.stderr
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 9
    with open(run / "csv" / "version_0" / "metrics.csv", newline="") as file:
        steps = [int(row["step"]) for row in csv.DictReader(file) if row["train/loss"]]
    # Lightning logs a resumed run's batches one step later (5 -> 6): compare as a sequence
    assert steps[:5] == list(range(5)) and len(steps) == 9 and steps == sorted(set(steps)), steps


@pytest.mark.timeout(600)
def test_cli_wandb_offline_writes_files(tmp_path):
    pytest.importorskip("wandb")
    run_cli(
        tmp_path,
        "debug=fast",
        "threads=1",
        "logger=wandb",
        "test=false",
        env_extra={"WANDB_MODE": "offline"},
    )
    (run,) = run_dirs(tmp_path)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline, list(run.iterdir())
    assert list(offline[0].glob("*.wandb"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.gamm=2", "Could not override 'loss.gamm'"),
        ("data=nope", "Could not find 'data/nope'"),
        ("loss.gamma=-1", "`gamma` must be a finite γ >= 0, got -1"),
        ("model.model_name=not_a_model", "Unknown model (not_a_model)"),
    ],
)
def test_bad_override_gives_a_clear_error(tmp_path, override, message):
    proc = run_cli(tmp_path, override, "debug=fdr", check=False)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    runs = tmp_path / "logs" / "train" / "runs"
    if override.startswith(("loss.gamm=", "data=")):
        assert not runs.exists()  # the config did not compose: no run dir
    else:
        # the run dir keeps the config that was tried and, in train.log, the error
        (run,) = run_dirs(tmp_path)
        log = (run / "train.log").read_text()
        assert "[ERROR] - the run failed" in log and message in log and "Traceback" in log, log
        assert (run / ".hydra" / "config.yaml").is_file()


def test_missing_image_folder_names_the_config_key(tmp_path):
    proc = run_cli(
        tmp_path, "data=image_folder", "data.root=/nonexistent", "debug=fdr", check=False
    )
    assert proc.returncode != 0
    expected = (
        "error: train folder /nonexistent/train not found: set data.root= to the folder that "
        "holds the split folders (train/, val/, test/), now data.root=/nonexistent"
    )
    assert expected in proc.stderr and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    (run,) = run_dirs(tmp_path)
    assert expected[len("error: ") :] in (run / "train.log").read_text()


@pytest.mark.timeout(900)
def test_cli_detection_experiment(tmp_path):
    proc = run_cli(
        tmp_path,
        "experiment=detection_focal_warmup",
        "debug=fast",
        "threads=1",
        "data.num_train=32",
    )
    (run,) = run_dirs(tmp_path, "detection_focal_warmup")
    header = (run / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in (
        "val/map",
        "val/map_50",
        "focal/num_positives",
        "focal/p_positives",
        "focal/normalizer",
        "test/map",
    ):
        assert key in header, key
    assert any(k.startswith("val/map_class/") for k in header)
    assert list((run / "detections").glob("*.png"))
    assert "test/map" in proc.stdout
    # faster_coco_eval's ~20 INFO lines per mAP computation are quieted
    assert "faster_coco_eval" not in proc.stdout + proc.stderr
    assert "Average Precision" not in proc.stdout + proc.stderr


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_with("hydra/launcher=slurm", "trainer=ddp")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.max_num_timeout == 0  # Lightning owns requeue
    assert launcher.additional_parameters.signal == "USR1@90"


def test_ddp_trainer_follows_slurm_env(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_NNODES", "2")
    cfg = compose_with("trainer=ddp")
    assert cfg.trainer.devices == 4 and cfg.trainer.num_nodes == 2 and cfg.trainer.strategy == "ddp"
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    monkeypatch.delenv("SLURM_NNODES")
    cfg = compose_with("trainer=ddp")
    assert cfg.trainer.devices == "auto" and cfg.trainer.num_nodes == 1


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_multirun_sweep_on_one_machine(tmp_path):
    proc = run_cli(
        tmp_path, "-m", "loss.gamma=0,2", "debug=fdr", "threads=1", "callbacks.focal_plots=null"
    )
    sweeps = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert jobs == ["0", "1"], jobs
    overrides = [(sweeps[0] / j / ".hydra" / "overrides.yaml").read_text() for j in jobs]
    assert "loss.gamma=0" in overrides[0] and "loss.gamma=2" in overrides[1]
    assert "#0 : loss.gamma=0" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_built_wheel_ships_the_configs(tmp_path):
    import zipfile

    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(tmp_path), "-q"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("lightning_focal-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"lightning_focal/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*.yaml")
    }
    assert expected and expected <= names, sorted(expected - names)[:5]
    assert "lightning_focal/train.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "lightning-focal-train = lightning_focal.train:main"
        in zipfile.ZipFile(wheel).read(entry).decode()
    )
