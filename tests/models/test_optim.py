"""The models' optimiser and scheduler from partials (lightning_focal.models._optim)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from lightning_focal.models._optim import optimizers_from


def test_a_one_cycle_shorter_than_its_phases_is_refused_naming_the_keys():
    """Before: experiment=detection with trainer.max_steps=10 (pct_start 0.1) died in
    torch's OneCycleLR with a bare ZeroDivisionError."""
    weight = torch.nn.Parameter(torch.zeros(2))
    one_cycle = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, pct_start=0.1)
    with pytest.raises(ValueError, match=r"model\.scheduler\.pct_start.*trainer\.max_steps"):
        optimizers_from(
            [weight], partial(torch.optim.SGD, lr=0.1), partial(one_cycle, total_steps=10)
        )
    built = optimizers_from(
        [weight], partial(torch.optim.SGD, lr=0.1), partial(one_cycle, total_steps=20)
    )
    assert isinstance(built["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.OneCycleLR)
    assert built["lr_scheduler"]["interval"] == "step"


def test_without_a_scheduler_the_optimizer_alone():
    weight = torch.nn.Parameter(torch.zeros(2))
    assert isinstance(
        optimizers_from([weight], partial(torch.optim.SGD, lr=0.1), None), torch.optim.SGD
    )
    assert isinstance(optimizers_from([weight], None, None), torch.optim.AdamW)
