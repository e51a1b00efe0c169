"""Kohonen neighbourhoods h_t(j, k): how much a vector won by code j also pulls code k.

Functions of the grid distance d between j and k and of the update counter t (training updates
done so far), as in Irie et al. (2024), with Δ the shrink rate:

- ``none``: h = 1 if j = k else 0 (plain EMA-VQ);
- ``hard``: 1 on the code itself, 1 / (1 + t Δ) for its grid neighbours (0 < d < 1.5), else 0;
- ``gaussian``: exp(-d (1 + t Δ) / base) (exponential in d, as the paper's code does).

The code itself always has weight 1, so every schedule shrinks towards ``none``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from somtok.errors import SomtokError
from somtok.tokenizer.grid import NEIGHBOUR_DISTANCE

NEIGHBOURHOOD_KINDS = ("none", "hard", "gaussian")


class Neighbourhood:
    """A neighbourhood schedule.

    Args:
        kind: "none", "hard" or "gaussian".
        shrink_rate: Δ, how fast the neighbourhood shrinks with t (the paper: 0.1).
        gaussian_base: the Gaussian's length scale at t = 0, in grid cells (the paper: 10).
    """

    def __init__(self, kind: str = "hard", shrink_rate: float = 0.1, gaussian_base: float = 10.0):
        if kind not in NEIGHBOURHOOD_KINDS:
            raise SomtokError(
                f"neighbourhood={kind!r} is unknown; expected one of {NEIGHBOURHOOD_KINDS}"
            )
        if not shrink_rate >= 0:
            raise SomtokError(f"shrink_rate={shrink_rate!r} is invalid; expected a number >= 0")
        if not gaussian_base > 0:
            raise SomtokError(f"gaussian_base={gaussian_base!r} is invalid; expected a number > 0")
        self.kind = kind
        self.shrink_rate = float(shrink_rate)
        self.gaussian_base = float(gaussian_base)

    def __repr__(self) -> str:
        return (
            f"Neighbourhood({self.kind!r}, shrink_rate={self.shrink_rate}, "
            f"gaussian_base={self.gaussian_base})"
        )

    @property
    def is_empty(self) -> bool:
        """True for "none": the update is plain EMA-VQ and needs no spreading over the grid."""
        return self.kind == "none"

    def _shrink(self, t: int) -> float:
        return 1.0 + t * self.shrink_rate

    def weights(self, distances: Tensor, t: int) -> Tensor:
        """h_t for every pair of codes: float (K, K) grid distances -> float32 (K, K) in [0, 1].

        Row j holds the weights with which a vector won by code j updates each code k.
        """
        distances = distances.float()
        if self.kind == "gaussian":
            return torch.exp(distances * (-self._shrink(t) / self.gaussian_base))  # 1 at d = 0
        # The winner itself always gets weight 1 (the paper's code sets the diagonal to 1).
        itself = (distances == 0).float()
        if self.kind == "none":
            return itself
        near = ((distances > 0) & (distances < NEIGHBOUR_DISTANCE)).float()
        return itself + near * self.neighbour_weight(t)

    def neighbour_weight(self, t: int) -> float:
        """h_t at grid distance 1, i.e. for an adjacent code: a number to log; 0 for "none"."""
        if self.kind == "none":
            return 0.0
        if self.kind == "hard":
            return 1.0 / self._shrink(t)
        return math.exp(-self._shrink(t) / self.gaussian_base)
