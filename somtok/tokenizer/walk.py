"""Moving token grids across the map: the map walk, random walks, the paper's shift, and the
baselines (token swap, latent interpolation) a walk is compared with.

Every function here takes token grids of any shape ``(...)`` (usually ``(h, w)``), int64 code
indices, and returns a stack of frames ``(F, ...)``, F the number of frames. Decode the frames
with ``SomTokenizer.decode_indices`` (or :func:`decode_frames`) and score them with
:func:`smoothness`. Nothing here needs Gradio; the app and ``somtok interpolate`` call it.

Letters: F frames, K codes, D code dimension, h w token-grid size, P positions (h * w).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from einops import rearrange

from somtok import limits
from somtok.errors import SomtokError
from somtok.tokenizer.grid import SOMGrid

if TYPE_CHECKING:
    from somtok.tokenizer.model import SomTokenizer

METHODS = ("walk", "swap", "latent")


class Smoothness(NamedTuple):
    """How much a sequence of decoded frames changes from frame to frame, on [0, 1] pixels.

    ``mean``: the mean absolute pixel change between consecutive frames (how far the picture
    moves per frame); ``max``: the largest change of any one pixel between any two consecutive
    frames (the worst jump). ``steps``: the mean absolute change of each pair of consecutive
    frames. All zero for a single frame.
    """

    mean: float
    max: float
    steps: torch.Tensor  # (F - 1,) float32


def _round_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``round(num / den)`` in exact integer arithmetic, halves rounded up; ``den > 0``."""
    return torch.div(2 * num + den, 2 * den, rounding_mode="floor")


def _offsets(grid: SOMGrid, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-axis grid offset from code ``a`` to code ``b`` along a shortest path.

    (...,) int64 twice -> (..., ndim) int64. On a toroidal grid the shorter way round is taken,
    ties the positive way, as ``SOMGrid.path`` does, so each position walks exactly that path.
    """
    delta = grid.coords(b) - grid.coords(a)
    if grid.toroidal:
        size = torch.tensor(grid.shape, dtype=delta.dtype)
        half = (size - 1) // 2
        delta = torch.remainder(delta + half, size) - half
    return delta


def _place(grid: SOMGrid, coords: torch.Tensor) -> torch.Tensor:
    """(..., ndim) coordinates, wrapped on a toroidal grid -> (...,) code indices."""
    if grid.toroidal:
        coords = torch.remainder(coords, torch.tensor(grid.shape, dtype=coords.dtype))
    return grid.index(coords)


def _check_pair(grid: SOMGrid, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise SomtokError(
            f"token grids differ in shape: {tuple(a.shape)} and {tuple(b.shape)}; "
            "expected two grids from the same tokenizer"
        )
    for name, idx in (("a", a), ("b", b)):
        if idx.numel() and (idx.min() < 0 or idx.max() >= grid.size):
            raise SomtokError(
                f"token grid {name} holds codes outside 0..{grid.size - 1} "
                f"(min {int(idx.min())}, max {int(idx.max())})"
            )


def _pick_frames(full: torch.Tensor, steps: int | None) -> torch.Tensor:
    """``steps`` frames spread evenly over ``full`` (F, ...), both ends kept; None -> all."""
    if steps is None:
        return full
    check_steps(steps)
    last = full.shape[0] - 1
    picks = _round_div(torch.arange(steps) * last, torch.tensor(steps - 1))
    return full[picks]


def check_steps(steps: int, limit: int | None = None) -> int:
    """Raise SomtokError unless ``steps`` is an int >= 2 (and <= ``limit`` when given)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise SomtokError(f"steps must be an integer >= 2 (both ends included); got {steps!r}")
    if limit is not None and steps > limit:
        raise SomtokError(f"steps must be at most {limit}; got {steps}")
    return steps


def walk_length(grid: SOMGrid, a: torch.Tensor, b: torch.Tensor) -> int:
    """Frames in the full map walk from ``a`` to ``b``: the longest shortest path, plus one."""
    _check_pair(grid, a, b)
    if a.numel() == 0:
        return 1
    return int(_offsets(grid, a, b).abs().amax()) + 1


def map_walk(
    grid: SOMGrid, a: torch.Tensor, b: torch.Tensor, steps: int | None = None
) -> torch.Tensor:
    """Walk every token of grid ``a`` across the map to the token at the same place in ``b``.

    a, b: int (...,) code indices on ``grid``. Returns int64 (F, ...): frame 0 is ``a``, the
    last frame is ``b``. Each position follows a shortest 8-neighbour path on the map (as many
    moves as the Chebyshev distance between its two codes), makes at most one move per frame,
    and spreads its moves evenly so that all positions arrive together at the last frame. The
    full walk has as many frames as the longest path needs, plus one, so consecutive frames
    differ only by map neighbours. ``steps`` picks that many frames evenly from the full walk
    (frames repeat when ``steps`` exceeds it); None keeps it whole.
    """
    a, b = torch.as_tensor(a).long(), torch.as_tensor(b).long()
    frames = walk_length(grid, a, b)
    delta = _offsets(grid, a, b)  # (..., ndim)
    moves = delta.abs().amax(dim=-1, keepdim=True)  # (..., 1) moves this position makes
    start = grid.coords(a)

    # Two rounded linear schedules: how many moves a position has made by frame f (at most
    # one more per frame), and where along its own shortest path that many moves lead (the
    # longest axis moves every time, so every move is a single 8-neighbour step).
    f = torch.arange(frames).view(-1, *([1] * moves.dim()))  # (F, 1, ..., 1)
    made = _round_div(moves * f, torch.tensor(max(frames - 1, 1)))  # (F, ..., 1)
    along = _round_div(delta * made, moves.clamp(min=1))  # (F, ..., ndim)
    full = _place(grid, start + along)  # (F, ...)
    return _pick_frames(full, steps)


def random_walk(
    grid: SOMGrid,
    start: torch.Tensor,
    steps: int,
    radius: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Variations of one token grid: every token wanders at random around its own code.

    start: int (...,) code indices. Returns int64 (F, ...), F = ``steps``, frame 0 = ``start``.
    At each frame every position takes a random step in {-1, 0, 1} per axis (an 8-neighbour
    move or a pause), kept within Chebyshev distance ``radius`` of its starting code and inside
    the map (wrapping on a toroidal grid), so consecutive frames differ only by neighbours.
    """
    check_steps(steps)
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise SomtokError(f"radius must be an integer >= 0; got {radius!r}")
    start = torch.as_tensor(start).long()
    _check_pair(grid, start, start)
    origin = grid.coords(start)  # (..., ndim)
    upper = torch.tensor(grid.shape) - 1
    frames, here = [start], origin
    for _ in range(steps - 1):
        step = torch.randint(-1, 2, here.shape, generator=generator)
        here = torch.clamp(here + step, origin - radius, origin + radius)
        if not grid.toroidal:
            here = torch.minimum(here.clamp(min=0), upper)
        frames.append(_place(grid, here))
    return torch.stack(frames)


def shift_tokens(
    grid: SOMGrid, indices: torch.Tensor, offset: int | tuple[int, ...]
) -> torch.Tensor:
    """The paper's shift: every token moved by the same grid offset.

    indices: int (...,). ``offset`` is one int (the same on every axis, as in the paper) or one
    int per map axis (rows, columns). Clamped at the border, wrapped on a toroidal grid.
    Returns int64 (...,).
    """
    if isinstance(offset, int):
        offset = (offset,) * grid.ndim
    offset = tuple(int(o) for o in offset)
    if len(offset) != grid.ndim:
        raise SomtokError(
            f"offset {offset} has {len(offset)} entries; expected {grid.ndim} for a "
            f"{'x'.join(map(str, grid.shape))} map"
        )
    return grid.shift(torch.as_tensor(indices).long(), offset)


def token_swap(
    a: torch.Tensor, b: torch.Tensor, steps: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Baseline: positions switch from their token in ``a`` to the one in ``b`` in random order.

    a, b: int (...,). Returns int64 (F, ...), F = ``steps``; frame f has about f / (F - 1) of
    the positions switched, frame 0 is ``a`` and the last frame is ``b``.
    """
    check_steps(steps)
    a, b = torch.as_tensor(a).long(), torch.as_tensor(b).long()
    if a.shape != b.shape:
        raise SomtokError(f"token grids differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    positions = a.numel()
    rank = torch.empty(positions, dtype=torch.long)
    rank[torch.randperm(positions, generator=generator)] = torch.arange(positions)
    switched = _round_div(torch.arange(steps) * positions, torch.tensor(steps - 1))  # (F,)
    take_b = rank[None, :] < switched[:, None]  # (F, P)
    frames = torch.where(take_b, b.reshape(1, -1), a.reshape(1, -1))  # (F, P)
    return frames.reshape(steps, *a.shape)


@torch.no_grad()
def latent_interpolation(
    tokenizer: SomTokenizer, a: torch.Tensor, b: torch.Tensor, steps: int
) -> torch.Tensor:
    """Baseline: mix the code vectors of ``a`` and ``b`` linearly, then quantise again.

    a, b: int (h, w) token grids of ``tokenizer``. Returns int64 (F, h, w), F = ``steps``;
    frame f quantises (1 - t) w_a + t w_b with t = f / (F - 1), so the ends are ``a`` and ``b``
    exactly (a code is its own nearest code).
    """
    check_steps(steps)
    a, b = torch.as_tensor(a).long(), torch.as_tensor(b).long()
    _check_pair(tokenizer.quantizer.grid, a, b)
    quantizer = tokenizer.quantizer
    wa, wb = quantizer.lookup(a), quantizer.lookup(b)  # (..., D)
    t = torch.linspace(0, 1, steps).view(-1, *([1] * wa.dim()))  # (F, 1, ..., 1)
    mixed = (1 - t) * wa + t * wb  # (F, ..., D)
    flat = rearrange(mixed, "f ... d -> (f ...) d")  # (F * P, D)
    frames = quantizer.nearest(flat).reshape(steps, *a.shape)
    frames[0], frames[-1] = a, b
    return frames


def interpolate(
    tokenizer: SomTokenizer,
    a: torch.Tensor,
    b: torch.Tensor,
    method: str = "walk",
    steps: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Token frames from grid ``a`` to grid ``b`` by ``method`` (one of :data:`METHODS`).

    a, b: int (h, w). Returns int64 (F, h, w). ``steps`` None means the full map walk's length
    for every method, so the methods compare at equal frame counts.
    """
    if method not in METHODS:
        raise SomtokError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    grid = tokenizer.quantizer.grid
    a, b = torch.as_tensor(a).long(), torch.as_tensor(b).long()
    if steps is None:
        steps = max(walk_length(grid, a, b), 2)
    if method == "walk":
        return map_walk(grid, a, b, steps)
    if method == "swap":
        return token_swap(a, b, steps, generator)
    return latent_interpolation(tokenizer, a, b, steps)


@torch.no_grad()
def decode_frames(tokenizer: SomTokenizer, frames: torch.Tensor) -> torch.Tensor:
    """int (F, h, w) token frames -> float32 (F, 3, H, W) images in [0, 1], decoded in batches."""
    chunks = torch.split(torch.as_tensor(frames).long(), limits.DECODE_BATCH_SIZE)
    return torch.cat([tokenizer.decode_indices(chunk) for chunk in chunks])


def smoothness(images: torch.Tensor) -> Smoothness:
    """The mean and the largest pixel change between consecutive frames.

    images: float (F, C, H, W) in [0, 1] (uint8 is scaled by 1/255).

    The two say different things. The mean adds up: a sequence that takes every pixel
    straight from A to B has the same mean whether it moves all pixels a little at each frame
    or flips a few all the way, and a walk through intermediate codes moves more in total than
    a direct jump. The largest change tells the two apart: a walk over an ordered map makes no
    jump larger than one neighbouring code's, token swap replaces whole patches at once.
    """
    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        images = images.float() / 255
    if images.dim() != 4:
        raise SomtokError(f"images must be (F, C, H, W); got shape {tuple(images.shape)}")
    if len(images) < 2:
        return Smoothness(0.0, 0.0, torch.zeros(0))
    diffs = (images[1:].float() - images[:-1].float()).abs().flatten(1)  # (F - 1, C * H * W)
    steps = diffs.mean(dim=1)  # (F - 1,)
    return Smoothness(float(steps.mean()), float(diffs.max()), steps)
