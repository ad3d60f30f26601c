"""``ResumableCSVLogger``: Lightning's ``CSVLogger`` that continues a run dir's ``metrics.csv``."""

from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

__all__ = ["ResumableCSVLogger"]


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
