"""The map walk and its baselines: invariants on random grids, and smoothness on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from somtok.errors import SomtokError
from somtok.tokenizer.grid import SOMGrid
from somtok.tokenizer.walk import (
    map_walk,
    random_walk,
    shift_tokens,
    smoothness,
    token_swap,
    walk_length,
)

GRIDS = [
    SOMGrid((32, 16)),
    SOMGrid((7, 5), toroidal=True),
    SOMGrid((6, 6), toroidal=True),
    SOMGrid((40,)),
]


def _pair(grid: SOMGrid, seed: int, shape=(8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randint(grid.size, shape, generator=gen),
        torch.randint(grid.size, shape, generator=gen),
    )


def _steps_are_neighbours_or_still(grid: SOMGrid, frames: torch.Tensor) -> bool:
    before, after = frames[:-1], frames[1:]
    return bool((grid.are_neighbours(before, after) | (before == after)).all())


@pytest.mark.parametrize("grid", GRIDS, ids=repr)
def test_full_walk_moves_by_neighbours_and_ends_exactly(grid):
    a, b = _pair(grid, seed=0)
    frames = map_walk(grid, a, b)

    assert frames.dtype == torch.int64
    assert frames.shape == (int(grid.chebyshev(a, b).max()) + 1, *a.shape)
    assert torch.equal(frames[0], a) and torch.equal(frames[-1], b)
    assert _steps_are_neighbours_or_still(grid, frames)


@pytest.mark.parametrize("grid", GRIDS, ids=repr)
def test_every_position_walks_its_shortest_path(grid):
    a, b = _pair(grid, seed=1, shape=(4, 4))
    frames = map_walk(grid, a, b)

    for pos in range(a.numel()):
        track = frames.flatten(1)[:, pos].tolist()
        visited = [c for i, c in enumerate(track) if i == 0 or c != track[i - 1]]
        assert visited == grid.path(int(a.flatten()[pos]), int(b.flatten()[pos]))


def test_positions_spread_their_moves_and_arrive_together():
    grid = SOMGrid((32, 16))
    a = torch.tensor([[0, 0]])
    b = torch.tensor([[31 * 16, 2]])  # 31 moves down the first column; 2 moves along the row
    frames = map_walk(grid, a, b)

    assert len(frames) == 32
    short = frames[:, 0, 1].tolist()
    first_move, second_move = short.index(1), short.index(2)
    # The short path does not sprint and then idle: its moves are spread over the walk.
    assert 5 < first_move < second_move < 31


@pytest.mark.parametrize("steps", [2, 3, 10, 50])
def test_asked_length_picks_evenly_and_keeps_the_ends(steps):
    grid = SOMGrid((32, 16))
    a, b = _pair(grid, seed=2)
    full = map_walk(grid, a, b)
    frames = map_walk(grid, a, b, steps=steps)

    assert frames.shape[0] == steps
    assert torch.equal(frames[0], a) and torch.equal(frames[-1], b)
    # Every picked frame is a frame of the full walk, in order.
    where = [next(i for i, f in enumerate(full) if torch.equal(f, g)) for g in frames]
    assert where == sorted(where)
    if steps >= len(full):
        assert _steps_are_neighbours_or_still(grid, frames)


def test_walk_between_equal_grids_stands_still():
    grid = SOMGrid((8, 8))
    a, _ = _pair(grid, seed=3)
    assert walk_length(grid, a, a) == 1
    assert torch.equal(map_walk(grid, a, a, steps=4), a.expand(4, *a.shape))


def test_walk_refuses_bad_input():
    grid = SOMGrid((8, 8))
    a, b = _pair(grid, seed=4)
    with pytest.raises(SomtokError, match="steps"):
        map_walk(grid, a, b, steps=1)
    with pytest.raises(SomtokError, match="shape"):
        map_walk(grid, a, b[:2])
    with pytest.raises(SomtokError, match="outside"):
        map_walk(grid, a, b + 64)


@pytest.mark.parametrize("grid", [SOMGrid((16, 16)), SOMGrid((5, 5), toroidal=True)], ids=repr)
def test_random_walk_stays_within_radius(grid):
    start, _ = _pair(grid, seed=5)
    gen = torch.Generator().manual_seed(0)
    frames = random_walk(grid, start, steps=30, radius=2, generator=gen)

    assert frames.shape == (30, *start.shape)
    assert torch.equal(frames[0], start)
    assert _steps_are_neighbours_or_still(grid, frames)
    assert int(grid.chebyshev(frames, start.expand_as(frames)).max()) <= 2
    assert not torch.equal(frames[-1], start)


def test_shift_moves_every_token_by_the_same_offset():
    grid = SOMGrid((32, 16))
    idx = torch.tensor([[0, 17], [511, 40]])
    shifted = shift_tokens(grid, idx, 1)
    assert shifted.tolist() == [[17, 34], [511, 57]]  # (31, 15) is clamped at the corner
    assert shift_tokens(grid, idx, (0, -1)).tolist() == [[0, 16], [510, 39]]
    with pytest.raises(SomtokError, match="offset"):
        shift_tokens(grid, idx, (1, 2, 3))


def test_token_swap_switches_positions_once_each():
    grid = SOMGrid((32, 16))
    a, b = _pair(grid, seed=6)
    b = torch.where(a == b, (b + 1) % grid.size, b)
    frames = token_swap(a, b, steps=9, generator=torch.Generator().manual_seed(0))

    assert frames.shape == (9, *a.shape)
    assert torch.equal(frames[0], a) and torch.equal(frames[-1], b)
    from_b = (frames == b).flatten(1).sum(1)  # (F,) positions already switched
    assert from_b.tolist() == [round(f * 64 / 8) for f in range(9)]
    # Once switched, a position stays switched.
    assert bool(((frames[1:] == b) >= (frames[:-1] == b)).all())


def test_smoothness_measures_consecutive_pixel_change():
    still = torch.full((4, 3, 8, 8), 0.5)
    assert smoothness(still)[:2] == (0.0, 0.0)
    assert smoothness(still[:1])[:2] == (0.0, 0.0)

    ramp = torch.linspace(0, 1, 5).view(5, 1, 1, 1).expand(5, 3, 8, 8)
    score = smoothness(ramp)
    assert score.mean == pytest.approx(0.25) and score.max == pytest.approx(0.25)

    jump = torch.cat([torch.zeros(3, 3, 8, 8), torch.ones(1, 3, 8, 8)])
    score = smoothness((jump * 255).to(torch.uint8))
    assert score.steps.tolist() == pytest.approx([0, 0, 1])
    assert score.max == pytest.approx(1.0) and score.mean == pytest.approx(1 / 3)


def test_smoothness_tells_many_small_steps_from_a_few_jumps():
    # Both sequences take every pixel from 0 to 1 in four frames: one moves all pixels a
    # quarter at a time, the other flips a quarter of them at a time. Same mean, other jumps.
    gradual = torch.linspace(0, 1, 5).view(5, 1, 1, 1).expand(5, 1, 2, 2)
    flips = torch.zeros(5, 1, 2, 2)
    for f in range(1, 5):
        flips[f:, 0, (f - 1) // 2, (f - 1) % 2] = 1

    smooth, jumpy = smoothness(gradual), smoothness(flips)
    assert smooth.mean == pytest.approx(0.25) and jumpy.mean == pytest.approx(0.25)
    assert smooth.max == pytest.approx(0.25) and jumpy.max == pytest.approx(1.0)


# ---- on real images: the walk is smoother than token swap ----

KSOM_STEPS = 300  # about 30 s on 2 CPU cores; the map is already ordered enough to show


@pytest.fixture(scope="module")
def ksom_tokenizer(tmp_path_factory, cifar10_dir):
    """The shipped KSOM tokenizer, else a tiny KSOM trained briefly on real CIFAR-10."""
    from somtok import paths
    from somtok.tokenizer.model import load_tokenizer
    from somtok.tokenizer.train import TrainConfig, train_tokenizer

    if paths.DEFAULT_TOKENIZER.is_dir():
        shipped = load_tokenizer(None)
        if shipped.config.quantizer.neighbourhood != "none":
            return shipped
    run = tmp_path_factory.mktemp("ksom") / "run"
    config = TrainConfig(
        data=str(cifar10_dir),
        preset="tiny",
        quantizer="ksom-hard",
        steps=KSOM_STEPS,
        batch_size=64,
        train_limit=2000,
        eval_limit=100,
        save_every=KSOM_STEPS,
        eval_every=KSOM_STEPS,
        log_every=50,
        plot_images=4,
        run_dir=str(run),
    )
    return load_tokenizer(str(train_tokenizer(config)))


@pytest.mark.slow
def test_map_walk_is_smoother_than_token_swap_on_real_images(ksom_tokenizer, cifar10_dir):
    from somtok.tokenizer.data import load_images
    from somtok.tokenizer.walk import decode_frames, interpolate

    pairs = 20
    images = load_images(str(cifar10_dir), "test", 32, limit=2 * pairs).images
    tokens = ksom_tokenizer.encode(torch.from_numpy(np.array(images)))  # (2 * pairs, h, w)
    grid = ksom_tokenizer.quantizer.grid
    scores = {"walk": [], "swap": []}
    for a, b in zip(tokens[0::2], tokens[1::2], strict=True):
        steps = max(walk_length(grid, a, b), 2)  # the full walk; swap gets as many frames
        for method, found in scores.items():
            frames = interpolate(ksom_tokenizer, a, b, method, steps, torch.Generator())
            found.append(smoothness(decode_frames(ksom_tokenizer, frames)))

    walk_mean, swap_mean = ([s.mean for s in scores[m]] for m in ("walk", "swap"))
    walk_max, swap_max = ([s.max for s in scores[m]] for m in ("walk", "swap"))
    print(
        f"over {pairs} CIFAR-10 test pairs: largest pixel change walk {np.mean(walk_max):.4f}, "
        f"swap {np.mean(swap_max):.4f}; mean pixel change walk {np.mean(walk_mean):.4f}, "
        f"swap {np.mean(swap_mean):.4f}"
    )
    # Swap replaces whole patches at once; the walk moves by neighbouring codes only. (The walk
    # moves more in total, through intermediate codes, so the mean is not compared.)
    assert np.mean(walk_max) < 0.8 * np.mean(swap_max)
    assert sum(w < s for w, s in zip(walk_max, swap_max, strict=True)) >= 0.8 * pairs
