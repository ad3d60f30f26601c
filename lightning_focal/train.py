"""``lightning-focal-train``: the Hydra command-line app over ``conf/``.

lightning-focal-train                          # timm classifier, digits_lt, focal + α + γ warmup
lightning-focal-train loss=ce schedule=none    # the cross-entropy baseline
lightning-focal-train -m loss.gamma=0,1,2      # a sweep, one run each
python -m lightning_focal.train --help         # every group and option
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from ._app_help import register_help_resolver
from .app_utils import (
    ConfigError,
    check_config,
    config_dir,
    data_kwargs_for,
    instantiate_callbacks,
    instantiate_loggers,
)

log = logging.getLogger("lightning_focal.train")
register_help_resolver()  # before @hydra.main: --help resolves its option lists

__all__ = ["main", "train"]

# third-party loggers that print per-evaluation chatter at INFO (faster_coco_eval: ~20 lines
# per mAP computation, every validation and test)
QUIET_LOGGERS = ("faster_coco_eval",)


def _route_logging() -> None:
    """Send Lightning's messages to Hydra's handlers (console and ``<run dir>/train.log``).

    ``lightning``, ``lightning.pytorch`` and ``lightning.fabric`` add their own stderr handler
    and stop propagation when imported before any root handler exists, which is always the
    case here (Hydra configures logging after the imports): their rank-zero info then never
    reached ``train.log``. Also quiets :data:`QUIET_LOGGERS` to WARNING.
    """
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not logging.getLogger().handlers:  # no Hydra job logging: leave Lightning's own
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def _log_to_file(level: int, message: str, exc_info: Any = None) -> None:
    """Write ``message`` to the root logger's file handlers only (``train.log``, not the console)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _config_hint(cfg: DictConfig, err: BaseException) -> str | None:
    """One line naming the config key to change, for errors a wrong setting explains."""
    if isinstance(err, ConfigError):  # check_config's, or a model's refusal of its loss node
        return str(err)
    data = cfg.get("data") or {}
    root = data.get("root")
    if (
        isinstance(err, FileNotFoundError)
        and str(data.get("_target_", "")).endswith("ImageFolderDataModule")
        and root is not None
        and str(root) in str(err)
    ):
        return (
            f"{err}: set data.root= to the folder that holds the split folders "
            f"({data.get('train_dir')}/, {data.get('val_dir')}/, {data.get('test_dir')}/), "
            f"now data.root={root}"
        )
    return None


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test as ``cfg`` says; return the final metrics (also used by the sweeper).

    Example:
        >>> callable(train)
        True
    """
    check_config(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    output_dir = cfg.paths.output_dir

    datamodule: pl.LightningDataModule = instantiate(cfg.data, _convert_="all")
    model: pl.LightningModule = instantiate(
        cfg.model, _convert_="all", **data_kwargs_for(cfg.model, datamodule)
    )
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]

    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path == "last":
            # Lightning resolves "last" (newest last*.ckpt of the checkpoint callbacks) and warns
            # when there is none; say where it looks, since a new run dir has none
            searched = sorted({str(cb.dirpath) for cb in trainer.checkpoint_callbacks})
            log.info(f"ckpt_path=last: looking for the last checkpoint in {searched or 'no dir'}")
            if not any(next(Path(d).glob("last*.ckpt"), None) for d in searched):
                log.warning(
                    f"ckpt_path=last: nothing to resume (no last*.ckpt in {searched or 'no dir'}): "
                    "training starts from step 0"
                )
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    if cfg.get("test", True):
        checkpoint = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
        best = (
            checkpoint.best_model_path
            if checkpoint is not None and checkpoint.best_model_path
            else None
        )
        if best is None:
            log.warning("no best checkpoint was saved: testing the current weights")
        trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=False)
        metrics.update(
            {
                k: float(v)
                for k, v in trainer.callback_metrics.items()
                if k.startswith("test/") and v.numel() == 1
            }
        )
    if trainer.is_global_zero:
        log.info(f"run dir: {output_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> Any:
    """Entry point of ``lightning-focal-train`` and ``python -m lightning_focal.train``.

    A failed job keeps its run dir (``.hydra/`` holds the config that was tried) and writes
    the error with its traceback into ``<run dir>/train.log``; an error that one setting
    explains (a missing image folder) exits with a one-line message naming the key.
    """
    _route_logging()
    try:
        metrics = train(cfg)
    except Exception as err:
        hint = _config_hint(cfg, err)
        _log_to_file(
            logging.ERROR,
            hint or f"the run failed: {err!r}",
            exc_info=(type(err), err, err.__traceback__),
        )
        if hint is not None:
            sys.exit(f"error: {hint}")
        raise
    name = cfg.get("optimized_metric")
    if name and HydraConfig.initialized() and name in metrics:
        return metrics[name]
    return None


if __name__ == "__main__":
    main()
