"""The Kohonen vector quantiser, its neighbourhoods and baselines, against dense formulas."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import somtok.tokenizer.quantizer as quantizer_module
from somtok.errors import SomtokError
from somtok.tokenizer.neighbourhood import Neighbourhood
from somtok.tokenizer.quantizer import (
    QUANTIZERS,
    KohonenQuantizer,
    QuantizerConfig,
    make_quantizer_config,
    quantisation_error,
    topographic_error,
)


def small(name: str, **overrides) -> KohonenQuantizer:
    """A 6 x 8 map of 16-dimensional codes, in training mode."""
    config = make_quantizer_config(name, codebook_size=48, dim=16, map_shape=(6, 8), **overrides)
    return KohonenQuantizer(config).train()


def dense_neighbourhood(kind: str, distances: torch.Tensor, t: int) -> torch.Tensor:
    """h_t written out from DESIGN.md, independently of neighbourhood.py: float64 (K, K)."""
    d = distances.double()
    if kind == "none":
        return (d == 0).double()
    if kind == "hard":
        return torch.where(d == 0, 1.0, torch.where(d < 1.5, 1 / (1 + 0.1 * t), 0.0)).double()
    return torch.exp(-d * (1 + 0.1 * t) / 10)


def dense_update(state: dict, z: torch.Tensor, h: torch.Tensor, decay=0.99, eps=1e-5) -> dict:
    """The paper's update with a one-hot (N, K) matrix, in float64."""
    w, size, total_sum = (state[k].double() for k in ("codebook", "cluster_size", "embed_sum"))
    z = z.double()
    one_hot = F.one_hot(torch.cdist(z, w).argmin(1), w.shape[0]).double()  # (N, K)
    spread = one_hot @ h  # (N, K)
    size = decay * size + (1 - decay) * spread.sum(0)
    size = (size + eps) / (size.sum() + w.shape[0] * eps) * size.sum()
    total_sum = decay * total_sum + (1 - decay) * spread.T @ z
    return {"codebook": total_sum / size[:, None], "cluster_size": size, "embed_sum": total_sum}


@pytest.mark.parametrize("name", ["ema", "ksom-hard", "ksom-gaussian"])
def test_updates_equal_the_dense_one_hot_formula(name):
    torch.manual_seed(0)
    q = small(name)
    kind = q.config.neighbourhood
    for t in range(3):
        z = torch.randn(300, 16) * 0.5
        expected = dense_update(q.state_dict(), z, dense_neighbourhood(kind, q.grid_distances, t))
        q(z)
        q.update_codebook()
        for key, value in expected.items():
            torch.testing.assert_close(getattr(q, key).double(), value, rtol=1e-5, atol=1e-5)
    assert q.step == 3


def test_micro_batches_add_up_to_one_batch():
    torch.manual_seed(1)
    whole, parts = small("ksom-gaussian"), small("ksom-gaussian")
    parts.load_state_dict(whole.state_dict())
    z = torch.randn(200, 16)
    whole(z)
    parts(z[:70])
    parts(z[70:])
    whole.update_codebook()
    parts.update_codebook()
    torch.testing.assert_close(parts.codebook, whole.codebook, rtol=1e-6, atol=1e-6)
    assert parts.step == whole.step == 1  # one optimiser step, two micro-batches


def test_neighbourhood_weights_follow_the_paper_schedules():
    d = torch.tensor([[0.0, 1.0, math.sqrt(2), 2.0]])
    hard, gauss = Neighbourhood("hard"), Neighbourhood("gaussian")
    assert hard.weights(d, 10).tolist() == [[1.0, 0.5, 0.5, 0.0]]
    torch.testing.assert_close(gauss.weights(d, 0), torch.exp(-d / 10))
    torch.testing.assert_close(gauss.weights(d, 10), torch.exp(-d * 2 / 10))
    assert Neighbourhood("none").weights(d, 0).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert hard.neighbour_weight(30) == pytest.approx(0.25)
    assert gauss.neighbour_weight(0) == pytest.approx(math.exp(-0.1))
    with pytest.raises(SomtokError, match="neighbourhood='square'"):
        Neighbourhood("square")


def test_neighbour_weight_is_readable_and_shrinks_with_updates():
    q = small("ksom-hard")
    assert q.neighbour_weight == 1.0
    for _ in range(10):
        q(torch.randn(64, 16))
        q.update_codebook()
    assert q.neighbour_weight == pytest.approx(0.5)  # 1 / (1 + 10 * 0.1)
    assert small("ema").neighbour_weight == 0.0


def one_point_update(name: str, init_cluster_size: float):
    """Feed 64 copies of one far point; return (quantizer, old codebook, winner, point)."""
    torch.manual_seed(2)
    q = small(name, init_cluster_size=init_cluster_size)
    old = q.codebook.clone()
    point = torch.full((16,), 3.0)
    out = q(point.expand(64, 16))
    q.update_codebook()
    return q, old, int(out.indices[0]), point


@pytest.mark.parametrize("name", ["ksom-hard", "ksom-gaussian"])
def test_the_winners_grid_neighbours_move_toward_the_data_more_than_far_codes(name):
    q, old, winner, point = one_point_update(name, 1.0)
    # Each code moves straight toward the point; the share of the gap it closes grows with h.
    closed = 1 - (q.codebook - point).norm(dim=1) / (old - point).norm(dim=1)  # (K,)
    d = q.grid_distances[winner]
    near, far = (d > 0) & (d < 1.5), d >= 4
    assert closed[winner] >= closed[near].max() - 1e-6
    assert closed[near].min() > 0.3
    assert closed[near].min() > closed[far].max() + 0.05
    if name == "ksom-hard":
        assert closed[far].abs().max() < 1e-5


def test_with_n0_one_codes_that_won_nothing_stay_where_they_were():
    q, old, winner, _ = one_point_update("ema", 1.0)
    assert torch.isfinite(q.codebook).all()
    others = torch.arange(48) != winner
    ratio = q.codebook[others].norm(dim=1) / old[others].norm(dim=1)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-3)


def test_with_n0_zero_codes_that_won_nothing_are_flung_far_away():
    # Documents N0 = 0 (the cluster sizes of much public VQ-VAE code): a code that wins nothing
    # has its running sum divided by a smoothed count of about epsilon, so after one update it
    # sits ~1e4-1e5 times further from the origin than it started: dead from then on.
    q, old, winner, _ = one_point_update("ema", 0.0)
    others = torch.arange(48) != winner
    ratio = q.codebook[others].norm(dim=1) / old[others].norm(dim=1)
    assert ratio.min() > 1e3
    # KSOM shares the winner's data with its grid neighbours, which are spared.
    ksom, old, winner, _ = one_point_update("ksom-hard", 0.0)
    near = torch.tensor(ksom.grid.neighbours(winner))
    assert (ksom.codebook[near].norm(dim=1) / old[near].norm(dim=1) < 10).all()


def test_the_counter_survives_a_safetensors_round_trip(tmp_path):
    q = small("ksom-hard")
    for _ in range(3):
        q(torch.randn(32, 16))
        q.update_codebook()
    save_file(q.state_dict(), tmp_path / "q.safetensors")
    state = load_file(tmp_path / "q.safetensors")
    assert sorted(state) == ["cluster_size", "codebook", "embed_sum", "initialized", "update_count"]
    assert state["update_count"].dtype == torch.int64 and state["update_count"].ndim == 0
    restored = small("ksom-hard")
    restored.load_state_dict(state)
    assert restored.step == 3 and restored.neighbour_weight == pytest.approx(1 / 1.3)
    assert torch.equal(restored.codebook, q.codebook)


def test_a_learned_codebook_is_a_parameter_under_the_same_key():
    q = small("vq")
    assert [name for name, _ in q.named_parameters()] == ["codebook"]
    assert "codebook" in q.state_dict()
    assert list(small("ema").parameters()) == []


def test_eval_mode_and_inference_mode_change_nothing():
    q = small("ksom-gaussian", init="data")
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.eval()
    q(torch.randn(64, 16))
    q.update_codebook()
    q.train()
    with torch.inference_mode():
        q(torch.randn(64, 16))
    q.update_codebook()
    for key, value in q.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not bool(q.initialized)


def well_separated(n: int, q: KohonenQuantizer) -> torch.Tensor:
    """Vectors close to random codes of ``q``: float32 (n, D)."""
    idx = torch.randint(q.config.codebook_size, (n,))
    return q.codebook[idx] + 0.01 * torch.randn(n, q.config.dim)


def test_under_bf16_autocast_statistics_stay_float32_and_codes_match():
    torch.manual_seed(3)
    full, half = small("ksom-hard"), small("ksom-hard")
    half.load_state_dict(full.state_dict())
    z = well_separated(256, full)
    expected = full(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = half(z.bfloat16())
    assert torch.equal(got.indices, expected.indices)
    assert got.quantized.dtype == torch.bfloat16 and got.loss.dtype == torch.float32
    assert half._pending_sums.dtype == torch.float32
    full.update_codebook()
    half.update_codebook()
    for key in ("codebook", "cluster_size", "embed_sum"):
        assert getattr(half, key).dtype == torch.float32
    torch.testing.assert_close(half.codebook, full.codebook, rtol=1e-2, atol=2e-2)


def test_the_output_holds_the_codes_losses_and_statistics():
    torch.manual_seed(4)
    q = small("ksom-hard")
    z = torch.randn(100, 16, requires_grad=True)
    out = q(z)
    torch.testing.assert_close(out.quantized, q.lookup(out.indices))
    assert torch.equal(out.indices, torch.cdist(z.detach(), q.codebook).argmin(1))
    assert list(out.losses) == ["commitment"]
    expected = 0.25 * ((z - q.codebook[out.indices]) ** 2).mean()
    torch.testing.assert_close(out.loss, expected)
    out.quantized.sum().backward()  # straight through: d quantized / d z = 1
    torch.testing.assert_close(z.grad, torch.ones_like(z))


def test_perplexity_and_code_usage():
    q = small("ema")
    z = q.codebook[torch.tensor([0, 1, 2, 3] * 25)]
    out = q(z)
    assert out.perplexity == pytest.approx(4.0)
    assert int(out.codes_used) == 4 and int(out.dead_codes) == 44


def test_nearest_in_chunks_equals_a_brute_force_search(monkeypatch):
    torch.manual_seed(5)
    q = small("ema")
    z = torch.randn(1000, 16)
    monkeypatch.setattr(quantizer_module, "NEAREST_CHUNK_PAIRS", 48 * 7)  # chunks of 7 rows
    assert torch.equal(q.nearest(z), torch.cdist(z, q.codebook).argmin(1))
    with pytest.raises(SomtokError, match=r"expected a non-empty float tensor \(N, 16\)"):
        q.nearest(torch.randn(4, 15))
    with pytest.raises(SomtokError, match="token indices"):
        q.lookup(torch.tensor([48]))


def test_vq_learns_the_codebook_by_gradient_and_the_counter_still_counts():
    torch.manual_seed(6)
    q = small("vq")
    z = torch.randn(100, 16)
    out = q(z)
    assert sorted(out.losses) == ["codebook", "commitment"]
    torch.testing.assert_close(out.loss, 1.25 * out.losses["commitment"])  # equal MSEs
    out.loss.backward()
    used = torch.unique(out.indices)
    assert (q.codebook.grad[used].norm(dim=1) > 0).all()
    before = q.codebook.detach().clone()
    q.update_codebook()
    assert torch.equal(q.codebook.detach(), before) and q.step == 1


def test_gd_som_kohonen_loss_equals_the_dense_sum():
    torch.manual_seed(7)
    q = small("gd-som")
    for _ in range(2):
        q.update_codebook()  # t = 2
    z = torch.randn(90, 16)
    out = q(z)
    h = dense_neighbourhood("hard", q.grid_distances, 2)[out.indices]  # (N, K)
    w = q.codebook.detach().double()
    gaps = ((w[None, :, :] - w[out.indices][:, None, :]) ** 2).sum(-1)  # (N, K)
    expected = (h * gaps).sum(1).mean()
    assert out.losses["kohonen"].item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(
        out.loss,
        out.losses["codebook"] + 0.25 * out.losses["commitment"] + 0.1 * out.losses["kohonen"],
    )


def test_a_kohonen_gradient_step_pulls_neighbours_toward_the_winner():
    torch.manual_seed(8)
    q = small("gd-som")
    out = q(torch.full((10, 16), 5.0))
    winner = int(out.indices[0])
    near = torch.tensor(q.grid.neighbours(winner))
    before = (q.codebook[near] - q.codebook[winner]).norm(dim=1).detach()
    out.losses["kohonen"].backward()
    with torch.no_grad():
        q.codebook -= 0.1 * q.codebook.grad
    after = (q.codebook[near] - q.codebook[winner]).norm(dim=1).detach()
    torch.testing.assert_close(after, 0.8 * before)  # each step removes 2 * lr of the gap


@pytest.mark.parametrize("init", ["normal", "zeros", "uniform"])
def test_codebook_initialisations(init):
    torch.manual_seed(9)
    w = small("ema", init=init).codebook
    if init == "normal":
        assert 0.8 < w.std() < 1.2
    elif init == "zeros":
        assert torch.all(w == 0)
    else:
        assert w.abs().max() <= 1 / 48 and w.std() > 0


def test_data_init_copies_vectors_of_the_first_training_batch():
    torch.manual_seed(10)
    q = small("ksom-hard", init="data")
    z = torch.randn(100, 16)
    q(z)
    assert bool(q.initialized)
    is_a_row_of_z = (q.codebook[:, None, :] == z[None, :, :]).all(-1).any(1)  # (K,)
    assert is_a_row_of_z.all() and len(torch.unique(q.codebook, dim=0)) == 48
    assert torch.equal(q.embed_sum, q.codebook)


def test_named_quantizers_and_config_checks():
    assert sorted(QUANTIZERS) == ["ema", "gd-som", "ksom-gaussian", "ksom-hard", "vq"]
    assert make_quantizer_config("gd-som").kohonen_weight == 0.1
    assert make_quantizer_config("ema", decay=0.9).decay == 0.9
    assert QuantizerConfig(map_shape=[32, 16]).map_shape == (32, 16)  # as read from JSON
    with pytest.raises(SomtokError, match="quantizer='som'.*'ksom-hard'"):
        make_quantizer_config("som")
    with pytest.raises(SomtokError, match="unknown quantizer setting"):
        make_quantizer_config("ema", decya=0.9)
    bad = [
        {"map_shape": (16, 16)},
        {"update": "adam"},
        {"decay": 1.0},
        {"init": "ones"},
        {"kohonen_weight": 0.1},  # an EMA codebook has no gradient
        {"update": "gradient"},  # a neighbourhood but no Kohonen loss
        {"epsilon": 0.0, "init_cluster_size": 0.0},
    ]
    for overrides in bad:
        with pytest.raises(SomtokError):
            QuantizerConfig(**overrides)


def test_a_gaussian_map_trained_on_the_unit_square_is_topologically_ordered():
    # The paper's shrink rate (0.1 per update) suits 30,000 VQ-VAE steps, where the encoder
    # moves too; a stand-alone SOM needs its neighbourhood to shrink slowly compared with the
    # EMA memory 1 / (1 - decay), hence decay 0.9 with shrink rate 0.05 here.
    torch.manual_seed(0)
    config = make_quantizer_config(
        "ksom-gaussian", codebook_size=64, dim=2, map_shape=(8, 8), decay=0.9, shrink_rate=0.05
    )
    q = KohonenQuantizer(config).train()
    for _ in range(400):
        q(torch.rand(256, 2))
        q.update_codebook()
    points = torch.rand(4000, 2)
    assert topographic_error(q.codebook, q.grid, points) < 0.05
    assert quantisation_error(q.codebook, points) < 0.07  # 64 codes on a unit square
    shuffled = q.codebook[torch.randperm(64)]
    assert topographic_error(shuffled, q.grid, points) > 0.7
