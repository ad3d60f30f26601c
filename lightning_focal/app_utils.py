"""Glue between the Hydra config tree and Lightning objects (used by ``lightning_focal.train``)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

log = logging.getLogger("lightning_focal.train")

__all__ = [
    "config_dir",
    "data_kwargs_for",
    "focal_callbacks",
    "instantiate_callbacks",
    "instantiate_loggers",
]


def config_dir() -> str:
    """The config tree: ``lightning_focal/conf`` in a wheel, else ``conf/`` of the checkout.

    Example:
        >>> (Path(config_dir()) / "train.yaml").is_file()
        True
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"lightning_focal: no config tree found next to {here}")


def _named_nodes(cfg: Any, kind: str) -> list[Any]:
    from hydra.utils import instantiate

    objects = []
    if not cfg:
        return objects
    if not isinstance(cfg, Mapping):
        raise TypeError(
            f"{kind} config must be a dict of named _target_ nodes, got {type(cfg).__name__}"
        )
    for name, node in cfg.items():
        if node is None:
            continue
        if not isinstance(node, Mapping) or "_target_" not in node:
            raise ValueError(
                f"{kind}.{name} must be a node with a _target_ (or null to switch it off)"
            )
        objects.append(instantiate(node))
    return objects


def instantiate_callbacks(cfg: Any) -> list[Callback]:
    """Instantiate a dict of named callback nodes, skipping the ``null`` ones."""
    return _named_nodes(cfg, "callbacks")


def instantiate_loggers(cfg: Any) -> list[Logger]:
    """Instantiate a dict of named logger nodes, skipping the ``null`` ones."""
    return _named_nodes(cfg, "logger")


def focal_callbacks(cfg: Any) -> list[Callback]:
    """``GammaWarmup`` from ``schedule`` and ``ClassBalancedAlpha`` from ``loss.class_balanced``."""
    from hydra.utils import instantiate

    from .callbacks import ClassBalancedAlpha, GammaWarmup

    callbacks: list[Callback] = []
    loss = cfg.get("loss") or {}
    policy = isinstance(loss.get("gamma"), Mapping)
    if cfg.get("schedule") is not None:
        if policy:
            log.warning("loss.gamma is a sample-dependent policy: the γ schedule is not used")
        else:
            callbacks.append(GammaWarmup(instantiate(cfg.schedule)))
    balanced = loss.get("class_balanced")
    if balanced is not None:
        callbacks.append(ClassBalancedAlpha(**dict(balanced)))
    return callbacks


def data_kwargs_for(model_cfg: Any, datamodule: pl.LightningDataModule) -> dict[str, Any]:
    """What the datamodule knows and the model config leaves open: num_classes, class_names."""
    from hydra.utils import get_class

    target = get_class(model_cfg["_target_"])
    params = inspect.signature(target.__init__).parameters
    kwargs: dict[str, Any] = {}
    for name in ("num_classes", "class_names", "image_size"):
        if (
            name in params
            and model_cfg.get(name) is None
            and getattr(datamodule, name, None) is not None
        ):
            kwargs[name] = getattr(datamodule, name)
    return kwargs
