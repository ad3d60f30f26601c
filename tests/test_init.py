"""The package root: its public names, and an import that stays light."""

from __future__ import annotations

import subprocess
import sys

import lightning_focal


def test_import_does_not_import_the_app_dependencies() -> None:
    """``import lightning_focal`` and its lazy Lightning names leave timm, wandb and hydra
    unimported (a fresh interpreter, so nothing else imported them first). The plain import
    (the loss core) leaves torchvision out too; Lightning itself imports it when installed."""
    code = (
        "import sys, lightning_focal as lf\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
        "names = [getattr(lf, n) for n in lf.__all__]\n"
        "heavy = sorted({'timm', 'wandb', 'hydra', 'omegaconf'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_name_resolves_and_has_a_docstring_example() -> None:
    for name in lightning_focal.__all__:
        obj = getattr(lightning_focal, name)
        if name == "__version__":
            assert isinstance(obj, str)
            continue
        assert ">>>" in (obj.__doc__ or ""), f"{name} has no runnable example"


def test_loss_families_and_the_flsd53_constant_are_public() -> None:
    from lightning_focal import losses

    assert lightning_focal.FLSD53 is losses.FLSD53
    for name in ("SoftmaxFocalLoss", "SigmoidFocalLoss", "DenseFocalLoss"):
        cls = getattr(lightning_focal, name)
        assert issubclass(cls, lightning_focal.FocalLossBase), name
    assert not hasattr(lightning_focal, "FocalLoss") and "FocalLoss" not in lightning_focal.__all__
    assert lightning_focal.SoftmaxFocalLoss.takes_prior_bias is False
    assert lightning_focal.SigmoidFocalLoss.takes_prior_bias is True


def test_version_is_single_sourced() -> None:
    import importlib.metadata
    import pathlib

    import tomllib

    import lightning_focal

    pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("lightning-focal") == lightning_focal.__version__


def test_every_public_name_is_exported_and_importable() -> None:
    import lightning_focal
    import lightning_focal.callbacks
    import lightning_focal.schedules

    for name in lightning_focal.__all__:
        assert getattr(lightning_focal, name) is not None
    for module in (lightning_focal.callbacks, lightning_focal.schedules):
        for name in module.__all__:
            if name[0].isupper():
                assert name in lightning_focal.__all__, name
