"""What a ``_target_`` config node may say: its keys, checked against the arguments its target takes.

The one check behind the app's refusal of unknown config keys (``+loss.gama=2``) and the
models' refusal of a loss node they cannot build. No Hydra import: the models use it too.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["ConfigError", "accepted_arguments", "check_arguments"]


class ConfigError(ValueError):
    """A config value or key that cannot be honoured; the message names the key to change."""


def accepted_arguments(target: Callable[..., Any]) -> list[str] | None:
    """The keyword arguments ``target`` accepts, or ``None`` when it takes ``**kwargs``.

    Example:
        >>> accepted_arguments(lambda gamma=2.0, *, alpha=None: None)
        ['gamma', 'alpha']
        >>> accepted_arguments(dict) is None
        True
    """
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: nothing to check against
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_arguments(target: Callable[..., Any], keys: Iterable[str], where: str) -> None:
    """Refuse keys that ``target`` takes no argument for, naming ``<where>.<key>``.

    Args:
        target: the class or function a ``_target_`` names.
        keys: the node's keys (Hydra's own ``_``-prefixed keys are skipped).
        where: the node's config path, e.g. ``"loss"``.

    Example:
        >>> from lightning_focal import SoftmaxFocalLoss
        >>> check_arguments(SoftmaxFocalLoss, ["gamma", "poly1"], "loss")
        >>> check_arguments(SoftmaxFocalLoss, ["gama"], "loss")
        Traceback (most recent call last):
          ...
        lightning_focal._config.ConfigError: unknown config key loss.gama: SoftmaxFocalLoss takes no argument 'gama' (did you mean 'gamma'?); it takes gamma, alpha, reduction, ignore_index, label_smoothing, poly1, logit_adjustment, class_priors, num_classes
    """
    accepted = accepted_arguments(target)
    if accepted is None:
        return
    unknown = [k for k in keys if not str(k).startswith("_") and k not in accepted]
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(str(key), accepted, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    more = f" (and {', '.join(f'{where}.{k}' for k in unknown[1:])})" if unknown[1:] else ""
    name = getattr(target, "__qualname__", repr(target))
    raise ConfigError(
        f"unknown config key {where}.{key}{more}: {name} takes no argument {key!r}{hint}; "
        f"it takes {', '.join(accepted)}"
    )
