"""Shared test setup: the loss kernels run eagerly unless a test asks for ``torch.compile``.

Compiling a kernel costs seconds on a CPU; the eager kernels compute the same numbers, so
every test uses them except those that take the ``compile_backend`` fixture.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
