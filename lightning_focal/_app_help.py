"""The ``--help`` text of ``lightning-focal-train``: an OmegaConf resolver that lists a group's options.

``conf/hydra/help/lightning_focal.yaml`` writes one line per config group, its description
by hand and its options as ``${lightning_focal.options:<group>}``, so the options shown are
the ones Hydra can load (``conf/`` and any ``--config-dir``), never a stale copy.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

__all__ = ["RESOLVER", "group_options", "register_help_resolver"]

RESOLVER = "lightning_focal.options"


def group_options(group: str, _root_: Any = None) -> str:
    """The options of config group ``group``, sorted, the chosen one marked with ``*``.

    Reads the options from Hydra's config loader, so Hydra must be initialised (as it is
    while ``--help`` is printed, or inside ``hydra.initialize``); the choice comes from
    ``hydra.runtime.choices`` of the config being resolved (``_root_``, passed by OmegaConf).

    Example:
        >>> from hydra import compose, initialize_config_dir
        >>> from lightning_focal.app_utils import config_dir
        >>> register_help_resolver()
        >>> with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        ...     cfg = compose("train", overrides=["loss=ce"], return_hydra_config=True)
        ...     group_options("loss", cfg)
        'ce*, ce_cb, flsd53, focal, focal_alpha, focal_cb, focal_drw, la_ce, la_focal, poly1'
    """
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        raise RuntimeError(
            f"${{{RESOLVER}:{group}}} lists the options Hydra can load: resolve it inside a "
            "Hydra app or `hydra.initialize`"
        )
    options = sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    choices = OmegaConf.select(_root_, "hydra.runtime.choices") if _root_ is not None else None
    chosen = choices.get(group) if choices is not None else None
    return ", ".join(f"{name}*" if name == chosen else name for name in options)


def register_help_resolver() -> None:
    """Register :func:`group_options` as the ``lightning_focal.options`` resolver (idempotent).

    Example:
        >>> register_help_resolver()
        >>> OmegaConf.has_resolver("lightning_focal.options")
        True
    """
    OmegaConf.register_new_resolver(RESOLVER, group_options, replace=True)
