"""The map geometry: index <-> coordinates, distances, neighbours, paths and shifts."""

import itertools
import math

import pytest
import torch

from somtok.errors import SomtokError
from somtok.tokenizer.grid import SOMGrid


def test_most_square_shape_puts_the_larger_factor_first():
    assert SOMGrid.for_codebook(512).shape == (32, 16)  # the paper's map
    assert SOMGrid.for_codebook(64).shape == (8, 8)
    assert SOMGrid.for_codebook(12).shape == (4, 3)
    assert SOMGrid.for_codebook(7).shape == (7, 1)  # a prime: one column
    assert SOMGrid.for_codebook(10, shape=(10,)).ndim == 1


@pytest.mark.parametrize(
    "K, shape", [(512, (30, 16)), (8, (2, 2, 2)), (4, (0, 4)), (0, None), (6, (2.0, 3))]
)
def test_bad_shapes_are_refused_with_the_value(K, shape):
    with pytest.raises(SomtokError, match="expected"):
        SOMGrid.for_codebook(K, shape)


def test_index_is_row_times_columns_plus_column():
    grid = SOMGrid((4, 5))
    assert grid.coords(torch.tensor(7)).tolist() == [1, 2]
    assert int(grid.index(torch.tensor([3, 4]))) == 19
    every = torch.arange(grid.size)
    assert torch.equal(grid.index(grid.coords(every)), every)
    assert grid.coords(every.reshape(4, 5)).shape == (4, 5, 2)
    with pytest.raises(SomtokError, match="out of range"):
        grid.coords(torch.tensor([20]))
    with pytest.raises(SomtokError, match="outside"):
        grid.index(torch.tensor([4, 0]))


def test_distances_are_euclidean_and_wrap_on_a_torus():
    flat, torus = SOMGrid((4, 5)), SOMGrid((4, 5), toroidal=True)
    d, dt = flat.distances(), torus.distances()
    assert d.shape == (20, 20) and d.dtype == torch.float32
    assert torch.equal(d, d.T) and torch.all(d.diagonal() == 0)
    assert d[0, 6] == pytest.approx(math.sqrt(2))  # (0, 0) - (1, 1)
    assert d[0, 19] == pytest.approx(5.0)  # (0, 0) - (3, 4)
    assert dt[0, 19] == pytest.approx(math.sqrt(2))  # one step back on each axis
    assert dt[0, 4] == pytest.approx(1.0)
    assert SOMGrid((6,), toroidal=True).distances()[0].tolist() == [0, 1, 2, 3, 2, 1]


def test_neighbours_are_the_eight_surrounding_cells():
    grid = SOMGrid((4, 5))
    assert grid.neighbours(0) == [1, 5, 6]
    assert grid.neighbours(7) == [1, 2, 3, 6, 8, 11, 12, 13]
    assert len(grid.neighbours(2)) == 5  # top edge
    assert all(len(SOMGrid((4, 5), toroidal=True).neighbours(k)) == 8 for k in range(20))
    assert SOMGrid((6,)).neighbours(0) == [1] and SOMGrid((6,)).neighbours(3) == [2, 4]
    assert SOMGrid((6,), toroidal=True).neighbours(0) == [1, 5]


@pytest.mark.parametrize("toroidal", [False, True])
def test_neighbours_agree_with_distances_below_one_and_a_half(toroidal):
    grid = SOMGrid((5, 4), toroidal)
    d = grid.distances()
    a, b = torch.meshgrid(torch.arange(20), torch.arange(20), indexing="ij")
    assert torch.equal(grid.are_neighbours(a, b), (d > 0) & (d < 1.5))
    assert not grid.are_neighbours(torch.tensor(3), torch.tensor(3))


@pytest.mark.parametrize("shape, toroidal", [((6, 5), False), ((6, 5), True), ((9,), True)])
def test_every_path_is_a_shortest_walk_between_neighbours(shape, toroidal):
    grid = SOMGrid(shape, toroidal)
    for a, b in itertools.product(range(grid.size), repeat=2):
        path = grid.path(a, b)
        assert path[0] == a and path[-1] == b
        assert len(path) == int(grid.chebyshev(torch.tensor(a), torch.tensor(b))) + 1
        steps = torch.tensor(path)
        assert bool(grid.are_neighbours(steps[:-1], steps[1:]).all())


def test_paths_follow_the_straight_line_and_wrap_the_short_way():
    grid = SOMGrid((5, 5))
    assert grid.path(0, 4) == [0, 1, 2, 3, 4]
    assert grid.path(0, 24) == [0, 6, 12, 18, 24]
    assert grid.path(0, 14) == [0, 6, 7, 13, 14]  # (0,0) -> (2,4): diagonals spread out
    assert grid.path(3, 3) == [3]
    assert SOMGrid((5, 5), toroidal=True).path(0, 4) == [0, 4]


def test_shift_clamps_at_the_border_and_wraps_on_a_torus():
    idx = torch.tensor([[0, 6], [18, 24]])  # (0,0) (1,1) (3,3) (4,4) on 5 x 5
    assert SOMGrid((5, 5)).shift(idx, (2, 2)).tolist() == [[12, 18], [24, 24]]
    assert SOMGrid((5, 5)).shift(idx, (-1, 0)).tolist() == [[0, 1], [13, 19]]
    assert SOMGrid((5, 5), toroidal=True).shift(idx, (2, 2)).tolist() == [[12, 18], [0, 6]]
    assert SOMGrid((8,)).shift(torch.tensor([0, 7]), (3,)).tolist() == [3, 7]
    with pytest.raises(SomtokError, match="offset"):
        SOMGrid((5, 5)).shift(idx, (1,))
