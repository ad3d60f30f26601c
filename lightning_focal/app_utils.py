"""Glue between the Hydra config tree and Lightning objects (used by ``lightning_focal.train``)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from ._config import ConfigError

__all__ = [
    "DATA_ARGUMENTS",
    "ConfigError",
    "check_config",
    "config_dir",
    "data_kwargs_for",
    "instantiate_callbacks",
    "instantiate_loggers",
]


def _required(message: str) -> NoReturn:
    raise ConfigError(message)


# `${required:'what to give'}` marks a value the user must give. OmegaConf's `???` cannot
# do it here: merged onto a value (the model's loss defaults), `???` leaves that value.
if not OmegaConf.has_resolver("required"):
    OmegaConf.register_new_resolver("required", _required)


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
            raise ConfigError(
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


CONFIG_NODES = ("data", "model", "loss", "callbacks", "trainer", "logger", "paths")
"""The top-level nodes of the app's config (``hydra`` aside)."""
SETTINGS = ("task_name", "seed", "threads", "train", "test", "ckpt_path", "optimized_metric")
"""The top-level settings of ``train.yaml``."""


def check_config(cfg: Any) -> None:
    """Refuse a config that would not train as it says, before anything is built.

    Refused, each with a :class:`ConfigError` (a ``ValueError``) that names the key:

    * a top-level key the app does not read (``+los.gamma=2``);
    * a key of a ``_target_`` node, anywhere in the tree, that its class or function takes
      no argument for (``+loss.gama=2``, ``+model.lr=0.1``,
      ``+callbacks.model_checkpoint.every=2``), or a ``_target_`` that does not import;
    * a value left as ``???``, or a ``${required:...}`` not replaced (``loss=focal_alpha``
      without ``loss.alpha=[...]``);
    * loss settings that reach no model: a ``loss`` node without ``_target_``, or a
      ``model.loss`` other than ``${loss}``;
    * a sample-dependent γ (``loss=flsd53``) with a callback that sets γ
      (``GammaWarmup``, ``CalibrationGamma``).

    Example:
        >>> from omegaconf import OmegaConf
        >>> check_config(OmegaConf.create({"seed": 0, "sead": 1}))
        Traceback (most recent call last):
          ...
        lightning_focal._config.ConfigError: unknown config key sead: the app reads data, model, loss, callbacks, trainer, logger, paths, task_name, seed, threads, train, test, ckpt_path, optimized_metric
    """
    from omegaconf import DictConfig, OmegaConf

    known = (*CONFIG_NODES, *SETTINGS)
    unknown = [key for key in cfg if key not in known and key != "hydra"]
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]}: the app reads {', '.join(known)}")
    missing = [key for key in SETTINGS if key in cfg and OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ConfigError(_missing(missing[0]))
    for key in CONFIG_NODES:
        if key in cfg and not OmegaConf.is_interpolation(cfg, key):
            _check_node(cfg._get_node(key), key)

    loss = cfg.get("loss")
    if loss is None:
        return
    model = cfg.get("model") or {}
    wired = (
        "loss" in model
        and OmegaConf.is_interpolation(model, "loss")
        and model._get_node("loss")._value() == "${loss}"
    )
    if "_target_" not in loss or not wired:
        raise ConfigError(
            "the loss settings (loss.*) reach no model: a model option sets loss._target_ "
            "and model.loss: ${loss} (see conf/model/*.yaml)"
        )
    gamma = loss.get("gamma")
    if isinstance(gamma, DictConfig):
        from .callbacks import CalibrationGamma, GammaWarmup

        for name, node in (cfg.get("callbacks") or {}).items():
            target = _target_of(node, f"callbacks.{name}") if node is not None else None
            if isinstance(target, type) and issubclass(target, (GammaWarmup, CalibrationGamma)):
                raise ConfigError(
                    f"loss.gamma is a sample-dependent γ ({OmegaConf.to_container(gamma)}), "
                    f"which callbacks.{name} ({target.__name__}) cannot set: use schedule=none "
                    f"(or callbacks.{name}=null)"
                )


def _target_of(node: Any, where: str) -> Any:
    from hydra.utils import get_object
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig) or "_target_" not in node:
        return None
    try:
        return get_object(str(node._target_))
    except Exception as err:  # Hydra's ImportError or its own InstantiationException
        raise ConfigError(f"{where}._target_={node._target_!r} does not import: {err}") from None


def _check_node(node: Any, where: str) -> None:
    from omegaconf import DictConfig, ListConfig

    from ._config import check_arguments

    if isinstance(node, DictConfig):
        target = _target_of(node, where)
        if target is not None:
            check_arguments(target, list(node.keys()), where)
        children = [(key, f"{where}.{key}") for key in node]
    elif isinstance(node, ListConfig):
        children = [(i, f"{where}[{i}]") for i in range(len(node))]
    else:
        return
    for key, path in children:
        child = node._get_node(key)
        if child._is_missing():
            raise ConfigError(_missing(path))
        if not child._is_interpolation():
            _check_node(child, path)
        elif str(child._value()).startswith("${required:"):
            try:
                node[key]
            except InterpolationResolutionError as err:
                message = str(err).splitlines()[0].partition("interpolation: ")[2]
                raise ConfigError(f"{path} has no value: {message or err}") from None


def _missing(path: str) -> str:
    # Hydra would hand a `???` inside an interpolated node (model.loss: ${loss}) over as None
    return f"{path} has no value (??? in the config): give one, e.g. {path}=..."


DATA_ARGUMENTS = ("num_classes", "class_names", "image_size")
"""What a datamodule may know and a model node may leave open."""


def data_kwargs_for(model_cfg: Any, datamodule: pl.LightningDataModule) -> dict[str, Any]:
    """What the datamodule knows and the model config leaves open: num_classes, class_names.

    Each of :data:`DATA_ARGUMENTS` that a ``_target_`` node takes, leaves out (or ``null``)
    and the datamodule has, for the model node and for the nodes nested in it — the
    detector of ``DenseDetector`` gets ``num_classes``, the module ``class_names`` —, as
    keyword arguments of Hydra's ``instantiate`` (nested nodes as nested dicts, which it
    merges). Interpolated nodes (``model.loss: ${loss}``) and partials are left alone.

    Example:
        >>> from types import SimpleNamespace
        >>> from omegaconf import OmegaConf
        >>> model = OmegaConf.create({"_target_": "lightning_focal.models.DenseDetector",
        ...     "detector": {"_target_": "lightning_focal.models.fcos", "image_size": 64}})
        >>> data_kwargs_for(model, SimpleNamespace(num_classes=3, class_names=["a", "b", "c"]))
        {'class_names': ['a', 'b', 'c'], 'detector': {'num_classes': 3}}
    """
    from hydra.utils import get_object
    from omegaconf import DictConfig

    params = inspect.signature(get_object(model_cfg["_target_"])).parameters
    kwargs: dict[str, Any] = {}
    for name in DATA_ARGUMENTS:
        if (
            name in params
            and model_cfg.get(name) is None
            and getattr(datamodule, name, None) is not None
        ):
            kwargs[name] = getattr(datamodule, name)
    for key in model_cfg:
        if OmegaConf.is_interpolation(model_cfg, key):
            continue
        child = model_cfg[key]
        if isinstance(child, DictConfig) and "_target_" in child and not child.get("_partial_"):
            nested = data_kwargs_for(child, datamodule)
            if nested:
                kwargs[str(key)] = nested
    return kwargs
