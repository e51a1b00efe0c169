"""The map: K codes laid out on a 1-D or 2-D grid.

Code index = row * cols + col (the last axis varies fastest). Grid distance is the Euclidean
distance between grid positions; "neighbours" are the cells at grid distance 0 < d < 1.5, i.e.
the 8 surrounding cells of a 2-D grid and the 2 of a 1-D grid. On a toroidal grid every axis
wraps around, so there is no border and every code has the same number of neighbours.

Shapes: K codes, R S rows and columns of a 2-D map; ``ndim`` is 1 or 2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from somtok.errors import SomtokError

# Grid distance below which two cells are neighbours: catches the diagonal (sqrt 2 ~ 1.41)
# and excludes two steps along an axis (2.0). Same threshold as the paper's hard neighbourhood.
NEIGHBOUR_DISTANCE = 1.5


class SOMGrid:
    """The geometry of a self-organising map of ``prod(shape)`` codes.

    Args:
        shape: ``(K,)`` for a 1-D map or ``(R, S)`` for a 2-D one; positive integers.
        toroidal: wrap every axis around (no borders).
    """

    def __init__(self, shape: tuple[int, ...], toroidal: bool = False):
        shape = tuple(shape)
        if len(shape) not in (1, 2) or not all(isinstance(s, int) and s > 0 for s in shape):
            raise SomtokError(
                f"map_shape={shape!r} is not a valid grid; expected 1 or 2 positive integers"
            )
        self.shape: tuple[int, ...] = shape
        self.ndim: int = len(shape)
        self.size: int = math.prod(shape)
        self.toroidal: bool = bool(toroidal)
        self._dims = torch.tensor(shape, dtype=torch.int64)
        self._distances: Tensor | None = None

    @classmethod
    def for_codebook(
        cls, K: int, shape: tuple[int, ...] | None = None, toroidal: bool = False
    ) -> SOMGrid:
        """The grid of a K-code codebook: ``shape`` if given, else the most square 2-D one.

        The most square factorisation puts the larger factor first, as the paper does
        (512 -> 32 x 16); a prime K gets the degenerate (K, 1), a 1-D map in effect.
        """
        if not isinstance(K, int) or K < 1:
            raise SomtokError(f"codebook_size={K!r} is invalid; expected a positive integer")
        if shape is None:
            cols = max(c for c in range(1, math.isqrt(K) + 1) if K % c == 0)
            shape = (K // cols, cols)
        grid = cls(tuple(shape), toroidal)
        if grid.size != K:
            raise SomtokError(
                f"map_shape={tuple(shape)!r} holds {grid.size} codes but codebook_size={K}; "
                "expected a shape whose product is the codebook size"
            )
        return grid

    def __repr__(self) -> str:
        return f"SOMGrid(shape={self.shape}, toroidal={self.toroidal})"

    # Index <-> coordinates.

    def coords(self, idx: Tensor) -> Tensor:
        """Grid coordinates of code indices: int (...,) -> int64 (..., ndim)."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        self._check_indices(idx)
        if self.ndim == 1:
            return idx.unsqueeze(-1)
        cols = self.shape[1]
        return torch.stack([idx // cols, idx % cols], dim=-1)

    def index(self, coords: Tensor) -> Tensor:
        """Code indices of grid coordinates: int (..., ndim) -> int64 (...,)."""
        coords = torch.as_tensor(coords, dtype=torch.int64)
        if coords.shape[-1:] != (self.ndim,):
            raise SomtokError(
                f"coords of shape {tuple(coords.shape)} given; expected (..., {self.ndim})"
            )
        dims = self._dims.to(coords.device)
        if ((coords < 0) | (coords >= dims)).any():
            raise SomtokError(f"coords outside the {self.shape} grid given; expected 0 <= c < size")
        if self.ndim == 1:
            return coords[..., 0]
        return coords[..., 0] * self.shape[1] + coords[..., 1]

    # Distances.

    def _axis_gaps(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-axis distance between codes: int (...,), (...,) -> int64 (..., ndim), >= 0."""
        gaps = (self.coords(a) - self.coords(b)).abs()
        if self.toroidal:
            dims = self._dims.to(gaps.device)
            gaps = torch.minimum(gaps, dims - gaps)
        return gaps

    def distances(self) -> Tensor:
        """Euclidean grid distance between every pair of codes: float32 (K, K), symmetric."""
        if self._distances is None:
            idx = torch.arange(self.size)
            gaps = self._axis_gaps(idx[:, None], idx[None, :])  # (K, K, ndim)
            self._distances = gaps.float().pow(2).sum(-1).sqrt()
        return self._distances

    def chebyshev(self, a: Tensor, b: Tensor) -> Tensor:
        """Largest per-axis distance (steps of an 8-neighbour walk): int (...,) -> int64 (...,)."""
        a, b = torch.broadcast_tensors(torch.as_tensor(a), torch.as_tensor(b))
        return self._axis_gaps(a, b).amax(-1)

    def are_neighbours(self, a: Tensor, b: Tensor) -> Tensor:
        """Whether codes are grid neighbours (8-neighbourhood): bool (...,); a == b gives False."""
        return self.chebyshev(a, b) == 1

    def neighbours(self, idx: int) -> list[int]:
        """The grid neighbours of code ``idx``, sorted ascending."""
        self._check_indices(torch.tensor(idx))
        near = self.are_neighbours(torch.tensor(idx), torch.arange(self.size))
        return near.nonzero().flatten().tolist()

    # Walking the map.

    def path(self, a: int, b: int) -> list[int]:
        """A shortest 8-neighbour path from code ``a`` to code ``b``, both included.

        Of the many shortest paths, this one follows the straight grid line from a to b
        (rounded to cells), so walking it moves steadily in one direction. It has
        ``chebyshev(a, b) + 1`` codes; consecutive codes are neighbours.
        """
        start, end = self.coords(torch.tensor([a, b]))
        delta = end - start  # (ndim,) signed steps
        if self.toroidal:
            # Go the shorter way round; ties go the positive way.
            half = (self._dims - 1) // 2
            delta = (delta + half) % self._dims - half
        steps = int(delta.abs().max())
        if steps == 0:
            return [int(a)]
        i = torch.arange(steps + 1).unsqueeze(-1)  # (steps + 1, 1)
        # round(delta * i / steps) with half-up ties, in exact integer arithmetic.
        offsets = torch.div(2 * delta * i + steps, 2 * steps, rounding_mode="floor")
        cells = start + offsets  # (steps + 1, ndim)
        if self.toroidal:
            cells = cells % self._dims
        return self.index(cells).tolist()

    def shift(self, idx: Tensor, offset: tuple[int, ...]) -> Tensor:
        """Move codes by ``offset`` grid cells: int (...,) -> int64 (...,).

        At a border the coordinate is clamped (a toroidal grid wraps around instead).
        """
        offset = tuple(offset)
        if len(offset) != self.ndim or not all(isinstance(o, int) for o in offset):
            raise SomtokError(
                f"offset={offset!r} given for a {self.ndim}-D map; expected {self.ndim} integers"
            )
        idx = torch.as_tensor(idx, dtype=torch.int64)
        coords = self.coords(idx) + torch.tensor(offset, device=idx.device)
        dims = self._dims.to(coords.device)
        wrapped = coords % dims if self.toroidal else torch.minimum(coords.clamp(min=0), dims - 1)
        return self.index(wrapped)

    def _check_indices(self, idx: Tensor) -> None:
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.size):
            raise SomtokError(
                f"code index out of range [{int(idx.min())}, {int(idx.max())}] given; "
                f"expected 0 <= index < {self.size}"
            )
