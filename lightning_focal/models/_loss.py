"""The ``loss`` argument of the app's models: a focal-loss module or its ``_target_`` node.

A model takes its whole loss as one argument, so every option of the loss class reaches
it: the Hydra app passes the module Hydra built from the ``loss`` node, Python callers pass
a module (or a node), and ``load_from_checkpoint`` passes the node the model recorded in
its hyperparameters (:func:`focal_loss_node`; a module is never stored there).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from lightning.pytorch.utilities import rank_zero_warn

from .._config import check_arguments
from ..losses import FocalLossBase

__all__ = ["LossArg", "focal_loss_from", "focal_loss_node"]

LossArg = FocalLossBase | Mapping[str, Any] | None
L = TypeVar("L", bound=FocalLossBase)


def _target_name(cls: type) -> str:
    import lightning_focal

    if getattr(lightning_focal, cls.__name__, None) is cls:
        return f"lightning_focal.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _locate(path: str, where: str = "loss") -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{where}._target_={path!r} names nothing importable: {err}") from err


def focal_loss_from(loss: LossArg, family: type[L], num_classes: int, default: L, owner: str) -> L:
    """The model's loss: ``loss`` checked (a module) or built (a node), ``default`` for ``None``.

    A node is ``{"_target_": "lightning_focal.<Class>", <argument>: <value>, ...}``; its keys
    are checked against the class's arguments, naming ``loss.<key>`` when one is unknown.
    The loss gets the model's ``num_classes`` (a node may leave it out; a different value is
    refused), and per-class γ or α of another length are refused.

    Args:
        loss: a ``family`` module, its ``_target_`` node, or ``None``.
        family: the loss class the model trains with (its subclasses are accepted).
        num_classes: the model's classes.
        default: the loss for ``loss=None``.
        owner: the model's name, for messages.

    Example:
        >>> from lightning_focal import SoftmaxFocalLoss
        >>> node = {"_target_": "lightning_focal.SoftmaxFocalLoss", "gamma": 1.0, "poly1": 1.0}
        >>> loss = focal_loss_from(node, SoftmaxFocalLoss, 3, SoftmaxFocalLoss(), "Model")
        >>> float(loss.gamma), loss.poly1, loss.num_classes
        (1.0, 1.0, 3)
    """
    if loss is None:
        loss = default
    elif isinstance(loss, Mapping):
        loss = _build(loss, family, num_classes, owner)
    if not isinstance(loss, family):
        raise TypeError(
            f"{owner} trains with a {family.__name__} (loss._target_: {_target_name(family)}), "
            f"got {type(loss).__name__}"
        )
    for name in loss.value_buffers:
        value = getattr(loss, name)
        if value is not None and value.dim() == 1 and value.numel() != num_classes:
            raise ValueError(
                f"loss.{name} has {value.numel()} per-class values, but {owner} has "
                f"num_classes={num_classes}"
            )
    if loss.num_classes is None:
        loss.num_classes = num_classes  # later assignments (ClassBalancedAlpha) are checked too
    elif loss.num_classes != num_classes:
        raise ValueError(
            f"loss.num_classes={loss.num_classes}, but {owner} has num_classes={num_classes}"
        )
    return loss


def _build(node: Mapping[str, Any], family: type[L], num_classes: int, owner: str) -> L:
    kwargs = {str(k): v for k, v in node.items()}
    target = kwargs.pop("_target_", None)
    if target is None:
        raise ValueError(
            f"{owner}'s loss node needs a _target_ (e.g. {_target_name(family)}), got keys "
            f"{sorted(kwargs)}"
        )
    cls = _locate(target) if isinstance(target, str) else target
    if not (isinstance(cls, type) and issubclass(cls, family)):
        raise TypeError(
            f"{owner} trains with a {family.__name__}; loss._target_={target} is not one"
        )
    check_arguments(cls, kwargs, "loss")
    hydra_keys = [k for k in kwargs if k.startswith("_")]
    if hydra_keys:
        raise ValueError(f"loss.{hydra_keys[0]}: {owner} builds the loss node itself")
    if kwargs.get("num_classes") is None:
        kwargs["num_classes"] = num_classes
    return cls(**kwargs)


def _plain(value: Any) -> Any:
    """``value`` as plain Python (what a checkpoint loads with ``weights_only=True``), or raise."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    raise TypeError(type(value).__name__)


def focal_loss_node(loss: FocalLossBase, owner: str) -> dict[str, Any] | None:
    """The ``_target_`` node that rebuilds ``loss`` with the settings it has now.

    Each constructor argument is read back from the attribute of the same name (γ and α
    from their buffers, a sample-dependent γ as ``{"thresholds": ..., "gammas": ...}``).
    A loss that keeps an argument under another name gives ``None``, with a warning: then
    ``load_from_checkpoint`` needs ``loss=`` again.

    Example:
        >>> from lightning_focal import DenseFocalLoss
        >>> focal_loss_node(DenseFocalLoss(gamma=[1.0, 2.0], alpha=None, poly1=1.0), "Model")
        {'_target_': 'lightning_focal.DenseFocalLoss', 'gamma': [1.0, 2.0], 'alpha': None, 'normalization': 'batch', 'sync': True, 'ema_momentum': None, 'poly1': 1.0, 'num_classes': None}
    """
    node: dict[str, Any] = {"_target_": _target_name(type(loss))}
    for name, param in inspect.signature(type(loss)).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        try:
            if name == "gamma" and loss.gamma_policy is not None:
                policy = loss.gamma_policy
                node[name] = {"thresholds": list(policy.thresholds), "gammas": list(policy.gammas)}
            else:
                node[name] = _plain(getattr(loss, name))
        except (AttributeError, TypeError):
            rank_zero_warn(
                f"{owner}: {type(loss).__name__} keeps no plain attribute {name!r}, so its "
                f"settings are not in the hyperparameters; pass loss= to load_from_checkpoint"
            )
            return None
    return node
