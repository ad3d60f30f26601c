"""Sample-dependent γ: the exponent chosen per element from the model's own p_t.

Example:
    >>> from lightning_focal import FLSD53
    >>> FLSD53
    SampleDependentGamma(thresholds=(0.2,), gammas=(5.0, 3.0))
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from ._common import gamma_value, policy_gamma

__all__ = ["FLSD53", "SampleDependentGamma"]


@dataclass(frozen=True)
class SampleDependentGamma:
    """γ as a step function of the predicted probability of the true class, p_t.

    ``gammas[0]`` applies where ``p_t < thresholds[0]``, ``gammas[i]`` where
    ``thresholds[i-1] <= p_t < thresholds[i]`` and ``gammas[-1]`` above the last threshold.
    γ is chosen from p_t without a gradient through the choice, as in Mukhoti et al.
    (NeurIPS 2020), whose FLSD-53 is ``SampleDependentGamma((0.2,), (5.0, 3.0))``.
    Pass it as ``gamma=`` to either focal loss.

    Args:
        thresholds: strictly increasing probabilities in (0, 1).
        gammas: ``len(thresholds) + 1`` exponents, each >= 0.

    Example:
        >>> import torch
        >>> policy = SampleDependentGamma(thresholds=(0.2,), gammas=(5.0, 3.0))
        >>> policy.gamma_for(torch.tensor([0.1, 0.2, 0.9]))
        tensor([5., 3., 3.])
    """

    thresholds: Sequence[float] = (0.2,)
    gammas: Sequence[float] = (5.0, 3.0)

    def __post_init__(self) -> None:
        thresholds = tuple(float(t) for t in self.thresholds)
        gammas = tuple(float(g) for g in self.gammas)
        if len(gammas) != len(thresholds) + 1:
            raise ValueError(
                f"SampleDependentGamma needs len(gammas) == len(thresholds) + 1, "
                f"got {len(gammas)} gammas and {len(thresholds)} thresholds"
            )
        if any(not 0.0 < t < 1.0 for t in thresholds) or any(
            b <= a for a, b in itertools.pairwise(thresholds)
        ):
            raise ValueError(f"thresholds must be strictly increasing in (0, 1), got {thresholds}")
        gamma_value(list(gammas), "gammas")
        object.__setattr__(self, "thresholds", thresholds)
        object.__setattr__(self, "gammas", gammas)

    def gamma_for(self, p_t: Tensor) -> Tensor:
        """Per-element γ for the probabilities ``p_t`` (no gradient flows through)."""
        return policy_gamma(p_t.detach(), self.as_tuple())

    def as_tuple(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(thresholds, gammas)``: the hashable form the kernels take."""
        return tuple(self.thresholds), tuple(self.gammas)


FLSD53 = SampleDependentGamma((0.2,), (5.0, 3.0))
"""The FLSD-53 policy of Mukhoti et al. (NeurIPS 2020): γ=5 where p_t < 0.2, else γ=3."""
