"""Shared test setup: the loss kernels run eagerly unless a test asks for ``torch.compile``.

Compiling a kernel costs seconds on a CPU; the eager kernels compute the same numbers, so
every test uses them except those that take the ``compile_backend`` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from lightning_focal.losses import get_backend, set_backend


@pytest.fixture(scope="session", autouse=True)
def eager_loss_backend() -> Iterator[None]:
    """Run the fused loss kernels eagerly for the whole test session."""
    set_backend("eager")
    yield
    set_backend(None)


@pytest.fixture
def compile_backend() -> Iterator[str]:
    """Switch the loss kernels to ``torch.compile`` for one test, then back."""
    previous = get_backend()
    set_backend("compile")
    yield "compile"
    set_backend(previous)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core machine, OpenMP threads that wait on each other
    make a training step 10-100x slower; results do not depend on it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
