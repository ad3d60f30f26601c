"""Loggers that continue a run resumed in its own run dir: CSV rows and the wandb run."""

from __future__ import annotations

import csv
import os
import secrets
import string
import tempfile
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

__all__ = ["ResumableCSVLogger", "ResumableWandbLogger", "stable_run_id"]


class _ContinuingWriter(ExperimentWriter):
    """Keeps an earlier ``metrics.csv`` up to the first step this run logs, then appends."""

    @override
    def _check_log_dir_exists(self) -> None:
        # Lightning deletes the earlier file here; keep it, and its columns, until the first save
        self._continues = self._fs.isfile(self.metrics_file_path)
        if self._continues:
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))

    @override
    def save(self) -> None:
        if self._continues and self.metrics:
            self._continues = False
            first = min(int(row["step"]) for row in self.metrics)
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                rows = list(csv.DictReader(file))
            kept = [row for row in rows if row.get("step") and int(float(row["step"])) < first]
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            rank_zero_info(
                f"ResumableCSVLogger: {os.path.basename(self.metrics_file_path)} keeps {len(kept)} "
                f"earlier rows (steps < {first}) and drops {len(rows) - len(kept)} that this run redoes"
            )
        super().save()


class ResumableCSVLogger(CSVLogger):
    """:class:`~lightning.pytorch.loggers.CSVLogger` that continues an existing ``metrics.csv``.

    Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its version dir already holds one,
    so a run resumed into its own run dir (a fixed ``version``) loses the metrics of the
    steps before the checkpoint. This logger keeps the earlier rows whose step is before the
    first step this run logs, drops the rest (a resumed run redoes the steps after its
    checkpoint; a fresh run in the same dir starts again at 0) and appends; columns are the
    union of both runs'. Arguments are ``CSVLogger``'s; pin ``version`` so that a resumed
    run finds its directory.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = tempfile.mkdtemp()
        >>> for steps in (range(0, 4), range(2, 6)):  # a run, then a resume from step 2
        ...     logger = ResumableCSVLogger(root, name="csv", version=0)
        ...     for step in steps:
        ...         logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        ...     logger.save()
        >>> [line.split(",")[1] for line in (Path(logger.log_dir) / "metrics.csv").read_text().split()]
        ['step', '0', '1', '2', '3', '4', '5']
    """

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment


RUN_ID_FILE = "wandb_run_id"


def _random_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def stable_run_id(save_dir: str | os.PathLike[str], new_id: Any = None) -> str:
    """The wandb run id kept in ``<save_dir>/wandb_run_id``; made (and kept) by the first caller.

    The file is created atomically (a hard link that fails if it exists), so ranks that
    start at the same time agree on one id.

    Args:
        save_dir: the run dir.
        new_id: makes an id when there is none; 8 random lowercase letters and digits (the
            form of wandb's own ids) by default.

    Example:
        >>> import tempfile
        >>> run_dir = tempfile.mkdtemp()
        >>> first = stable_run_id(run_dir, new_id=lambda: "abc123")
        >>> first, stable_run_id(run_dir, new_id=lambda: "other")
        ('abc123', 'abc123')
    """
    path = Path(save_dir) / RUN_ID_FILE
    if not path.is_file():
        if new_id is None:
            new_id = _random_id
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
            tmp.write(str(new_id()))
        try:
            os.link(tmp.name, path)
        except FileExistsError:
            pass  # another rank was first: its id wins
        finally:
            os.unlink(tmp.name)
    run_id = path.read_text().strip()
    if not run_id:
        raise ValueError(f"{path} is empty: delete it, or give the logger an id")
    return run_id


class ResumableWandbLogger(WandbLogger):
    """:class:`~lightning.pytorch.loggers.WandbLogger` that resumes its wandb run in the same run dir.

    Without an ``id`` (or ``version``, or ``WANDB_RUN_ID``), ``WandbLogger`` starts a new
    wandb run every time, so a run resumed in its run dir (``ckpt_path=last``, a SLURM
    requeue) shows up as a second run. This logger keeps the run id in
    ``<save_dir>/wandb_run_id`` (:func:`stable_run_id`) and passes it to ``wandb.init``
    with ``resume="allow"`` (``WandbLogger``'s default): the same run dir continues the
    same wandb run, a new run dir gets a new one. Offline (``WANDB_MODE=offline`` or
    ``offline=True``), every start writes its own ``wandb/offline-run-<time>-<id>/`` with
    that id, and ``wandb sync`` appends them to one run. Arguments are ``WandbLogger``'s.

    Example:
        >>> import tempfile
        >>> run_dir = tempfile.mkdtemp()
        >>> first = ResumableWandbLogger(save_dir=run_dir, offline=True)
        >>> first.version == ResumableWandbLogger(save_dir=run_dir, offline=True).version
        True
        >>> first.version == ResumableWandbLogger(save_dir=tempfile.mkdtemp(), offline=True).version
        False
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._id is None and not os.environ.get("WANDB_RUN_ID") and self._save_dir:
            self._id = self._wandb_init["id"] = stable_run_id(self._save_dir)
