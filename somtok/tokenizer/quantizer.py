"""The vector quantiser: nearest code, straight-through gradient and the Kohonen (KSOM) update.

Shapes: N vectors, D code dimension, K codes.

With ``update="ema"`` the codebook is a buffer that learns by Kohonen's rule (DESIGN.md, "The
algorithm"): each training ``forward`` adds per-code counts and sums of the vectors it saw to a
float32 accumulator, and ``update_codebook()``, called once per optimiser step, sums them across
processes, spreads them over the grid with the neighbourhood h_t and applies the exponential
moving averages. With the neighbourhood "none" this is exactly EMA-VQ.

With ``update="gradient"`` the codebook is a parameter learned by the optimiser: plain VQ
(codebook + commitment losses) or GD-SOM (plus the Kohonen loss).

Counting per code first (bincount / index_add, O(N D)) and spreading the K per-code statistics
(O(K^2 D)) replaces the paper's dense one-hot (N, K) times (K, K) product (O(N K^2)).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from somtok.errors import SomtokError
from somtok.tokenizer.grid import SOMGrid
from somtok.tokenizer.neighbourhood import Neighbourhood

UPDATES = ("ema", "gradient")
INITS = ("normal", "zeros", "uniform", "data")

# The nearest-code search computes distances in chunks of at most this many (vector, code)
# pairs: 2**24 float32 values = 64 MiB, whatever N is.
NEAREST_CHUNK_PAIRS = 2**24


@dataclass
class QuantizerConfig:
    """Everything that defines a quantiser; saved inside every tokenizer checkpoint.

    Defaults are the paper's KSOM with the hard neighbourhood. ``codebook_weight`` and
    ``kohonen_weight`` only apply to ``update="gradient"`` (an EMA codebook has no gradient).
    """

    codebook_size: int = 512
    dim: int = 64
    map_shape: tuple[int, ...] | None = (32, 16)  # None: the most square 2-D grid
    toroidal: bool = False
    update: str = "ema"  # "ema" (Kohonen / EMA statistics) | "gradient" (learned codebook)
    neighbourhood: str = "hard"  # "none" | "hard" | "gaussian"
    shrink_rate: float = 0.1
    gaussian_base: float = 10.0
    decay: float = 0.99
    epsilon: float = 1e-5  # Laplace smoothing of the cluster sizes
    init_cluster_size: float = 1.0  # N0
    init: str = "normal"  # normal | zeros | uniform | data
    commitment_weight: float = 0.25
    codebook_weight: float = 1.0
    kohonen_weight: float = 0.0

    def __post_init__(self):
        if self.map_shape is not None:
            self.map_shape = tuple(self.map_shape)  # JSON gives a list
        _check_int("codebook_size", self.codebook_size)
        _check_int("dim", self.dim)
        SOMGrid.for_codebook(self.codebook_size, self.map_shape, self.toroidal)
        Neighbourhood(self.neighbourhood, self.shrink_rate, self.gaussian_base)
        _check_choice("update", self.update, UPDATES)
        _check_choice("init", self.init, INITS)
        _check_range("decay", self.decay, 0.0 <= self.decay < 1.0, "0 <= decay < 1")
        for name in ("epsilon", "init_cluster_size", "commitment_weight", "codebook_weight"):
            value = getattr(self, name)
            _check_range(name, value, value >= 0, f"{name} >= 0")
        if self.epsilon == 0 and self.init_cluster_size == 0:
            raise SomtokError(
                "epsilon=0 with init_cluster_size=0 divides unused codes by zero; "
                "expected epsilon > 0 or init_cluster_size > 0"
            )
        self._check_kohonen()

    def _check_kohonen(self) -> None:
        _check_range("kohonen_weight", self.kohonen_weight, self.kohonen_weight >= 0, ">= 0")
        if self.update != "gradient":
            if self.kohonen_weight > 0:
                raise SomtokError(
                    f"kohonen_weight={self.kohonen_weight} given with update={self.update!r}; "
                    "expected kohonen_weight=0 (the Kohonen loss needs update='gradient')"
                )
            return
        uses_neighbourhood = self.neighbourhood != "none"
        if uses_neighbourhood != (self.kohonen_weight > 0):
            raise SomtokError(
                f"update='gradient' with neighbourhood={self.neighbourhood!r} and "
                f"kohonen_weight={self.kohonen_weight}: expected either a neighbourhood and "
                "kohonen_weight > 0 (GD-SOM) or neighbourhood='none' and kohonen_weight=0 (VQ)"
            )


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SomtokError(f"{name}={value!r} is invalid; expected a positive integer")


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SomtokError(f"{name}={value!r} is unknown; expected one of {choices}")


def _check_range(name: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise SomtokError(f"{name}={value!r} is out of range; expected {expected}")


# The quantisers the CLI offers by name: QuantizerConfig fields each one overrides.
QUANTIZERS: dict[str, dict] = {
    "ksom-hard": {"update": "ema", "neighbourhood": "hard"},
    "ksom-gaussian": {"update": "ema", "neighbourhood": "gaussian"},
    "ema": {"update": "ema", "neighbourhood": "none"},
    "vq": {"update": "gradient", "neighbourhood": "none", "codebook_weight": 1.0},
    # The paper's GD-SOM runs use the hard neighbourhood and a Kohonen weight of 0.1.
    "gd-som": {"update": "gradient", "neighbourhood": "hard", "kohonen_weight": 0.1},
}


def make_quantizer_config(name: str, **overrides) -> QuantizerConfig:
    """The config of the quantiser called ``name`` in QUANTIZERS, with field ``overrides``."""
    if name not in QUANTIZERS:
        raise SomtokError(f"quantizer={name!r} is unknown; expected one of {sorted(QUANTIZERS)}")
    fields = {f.name for f in dataclasses.fields(QuantizerConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise SomtokError(
            f"unknown quantizer setting(s) {unknown}; expected fields of {sorted(fields)}"
        )
    return QuantizerConfig(**{**QUANTIZERS[name], **overrides})


class QuantizerOutput(NamedTuple):
    """What ``KohonenQuantizer.forward`` returns.

    quantized: (N, D) the codes, in z's dtype, with the straight-through gradient to z.
    indices: int64 (N,) the chosen codes.
    loss: float32 scalar, the weighted sum of ``losses``.
    losses: unweighted float32 scalars by name: "commitment" always; "codebook" and "kohonen"
        for a learned codebook (the latter for GD-SOM only).
    perplexity: float32 scalar, exp of the entropy of this batch's code histogram, in [1, K].
    codes_used: int64 scalar, codes chosen at least once in this batch.
    dead_codes: int64 scalar, K - codes_used.
    """

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    losses: dict[str, Tensor]
    perplexity: Tensor
    codes_used: Tensor
    dead_codes: Tensor


class KohonenQuantizer(nn.Module):
    """A vector quantiser whose codes live on a grid (KSOM, EMA-VQ, VQ or GD-SOM).

    State dict: ``codebook`` float32 (K, D) (a parameter for ``update="gradient"``, else a
    buffer), ``cluster_size`` float32 (K,), ``embed_sum`` float32 (K, D), ``update_count``
    int64 scalar (updates applied: the t of the neighbourhood schedule) and ``initialized``
    bool scalar (False until a "data" init has seen its first batch).
    """

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.config = config
        K = config.codebook_size
        self.grid = SOMGrid.for_codebook(K, config.map_shape, config.toroidal)
        self.neighbourhood = Neighbourhood(
            config.neighbourhood, config.shrink_rate, config.gaussian_base
        )

        codebook = _initial_codebook(config)  # (K, D)
        if config.update == "gradient":
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
        # The paper's code starts the running sum at the codebook itself whatever N0 is, so
        # with N0 = 0 a code that wins nothing is divided by a tiny smoothed count.
        self.register_buffer("cluster_size", torch.full((K,), float(config.init_cluster_size)))
        self.register_buffer("embed_sum", codebook.clone())
        self.register_buffer("update_count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("initialized", torch.tensor(config.init != "data"))
        distances = self.grid.distances()  # (K, K)
        self.register_buffer("grid_distances", distances.clone(), persistent=False)
        if config.neighbourhood == "hard":
            adjacency = self.neighbourhood.weights(distances, 0) - torch.eye(K)  # (K, K) 0 / 1
            self.register_buffer("grid_adjacency", adjacency, persistent=False)

        # Pending statistics are plain attributes, not buffers: DDP broadcasts every buffer
        # from rank 0 at each forward, which would overwrite the other ranks' sums.
        self._pending_counts: Tensor | None = None  # float32 (K,)
        self._pending_sums: Tensor | None = None  # float32 (K, D)

    def extra_repr(self) -> str:
        c = self.config
        return f"K={c.codebook_size}, D={c.dim}, {self.grid}, {c.update}, {self.neighbourhood}"

    @property
    def step(self) -> int:
        """Codebook updates applied so far: the t of the neighbourhood schedule."""
        return int(self.update_count)

    @property
    def neighbour_weight(self) -> float:
        """The current neighbourhood weight of an adjacent code (0 for "none"), for logging."""
        return self.neighbourhood.neighbour_weight(self.step)

    def neighbourhood_matrix(self) -> Tensor:
        """h_t(j, k) at the current step: float32 (K, K), row j = winner."""
        return self.neighbourhood.weights(self.grid_distances, self.step)

    # Looking codes up.

    def nearest(self, z: Tensor) -> Tensor:
        """The nearest code to each vector by squared L2: float (N, D) -> int64 (N,)."""
        self._check_vectors(z)
        return nearest_codes(self.codebook, z)[:, 0]

    def lookup(self, idx: Tensor) -> Tensor:
        """The codes of indices: int (...,) in [0, K) -> float32 (..., D)."""
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.codebook_size):
            raise SomtokError(
                f"token indices in [{int(idx.min())}, {int(idx.max())}] given; "
                f"expected 0 <= index < {self.config.codebook_size}"
            )
        return F.embedding(idx.long(), self.codebook)

    # Training.

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantise vectors: float (N, D) -> QuantizerOutput.

        In training mode (and outside inference mode) this also accumulates the statistics
        that ``update_codebook`` applies; in eval mode nothing in the module changes. The
        quantiser's maths runs in float32 whatever the autocast precision.
        """
        self._check_vectors(z)
        learning = self.training and not torch.is_inference_mode_enabled()
        with torch.autocast(device_type=z.device.type, enabled=False):
            z32 = z.float()
            if learning and self.config.init == "data" and not bool(self.initialized):
                self._init_from_data(z32.detach())

            indices = nearest_codes(self.codebook, z32)[:, 0]  # (N,)
            counts = torch.bincount(indices, minlength=self.config.codebook_size)  # (K,)
            codes = self.codebook[indices]  # (N, D), differentiable for a learned codebook
            losses = self._losses(z32, codes, counts)
            if learning and self.config.update == "ema":
                self._accumulate(z32.detach(), indices, counts)

            quantized = z32 + (codes - z32).detach()  # straight-through: dq/dz = 1
            loss = sum(self._loss_weight(name) * value for name, value in losses.items())
            perplexity, codes_used, dead_codes = code_statistics(counts)
        return QuantizerOutput(
            quantized.to(z.dtype), indices, loss, losses, perplexity, codes_used, dead_codes
        )

    @torch.no_grad()
    def update_codebook(self) -> None:
        """Apply the statistics accumulated since the last call; call once per optimiser step.

        Under torch.distributed the counts and sums are first added across processes, so
        every process computes the same codebook. Advances the step counter. An EMA codebook
        that saw no vector anywhere since the last call stays as it is, counter included.
        """
        if self.config.update == "gradient":
            self._reset_pending()  # nothing accumulates; only the schedule moves on
            self.update_count.add_(1)
            return
        stats = self._gather_pending()
        if stats is None:
            return
        stats = self._spread(stats)
        self._apply_moving_averages(stats[:, 0], stats[:, 1:])
        self.update_count.add_(1)

    def _spread(self, stats: Tensor) -> Tensor:
        """Per-winner statistics -> per-code: x_k = sum_j h_t(j, k) x_j; float32 (K, C) -> (K, C).

        Row j of ``stats`` holds what code j won: its count, then the sum of its vectors.
        """
        if self.neighbourhood.is_empty:
            return stats
        if self.config.neighbourhood == "hard":
            # h = I + w_t A with A the grid adjacency: skips building h at every step.
            return stats + self.neighbour_weight * (self.grid_adjacency.T @ stats)
        return self.neighbourhood_matrix().T @ stats

    def _loss_weight(self, name: str) -> float:
        return getattr(self.config, f"{name}_weight")

    def _losses(self, z: Tensor, codes: Tensor, counts: Tensor) -> dict[str, Tensor]:
        losses = {"commitment": F.mse_loss(z, codes.detach())}
        if self.config.update == "gradient":
            losses["codebook"] = F.mse_loss(codes, z.detach())
        if self.config.kohonen_weight > 0:
            losses["kohonen"] = self._kohonen_loss(counts)
        return losses

    def _kohonen_loss(self, counts: Tensor) -> Tensor:
        """GD-SOM: mean over vectors of sum_k h_t(b(n), k) ||w_k - sg(w_b(n))||^2.

        The inner sum depends on the winner only, so it is computed once per code (K, K)
        and weighted by how many vectors each code won.
        """
        w = self.codebook
        anchor = w.detach()
        # gaps[j, k] = ||w_k - sg(w_j)||^2
        gaps = (w * w).sum(-1)[None, :] - 2 * anchor @ w.T + (anchor * anchor).sum(-1)[:, None]
        per_winner = (self.neighbourhood_matrix() * gaps).sum(-1)  # (K,)
        return (counts.float() @ per_winner) / counts.sum()

    @torch.no_grad()
    def _accumulate(self, z: Tensor, indices: Tensor, counts: Tensor) -> None:
        """Add per-code counts and vector sums of one batch: float32 (N, D), int64 (N,), (K,)."""
        if self._pending_counts is None or self._pending_counts.device != z.device:
            K, D = self.config.codebook_size, self.config.dim
            self._pending_counts = torch.zeros(K, device=z.device)
            self._pending_sums = torch.zeros(K, D, device=z.device)
        self._pending_counts += counts
        self._pending_sums.index_add_(0, indices, z)

    def _reset_pending(self) -> None:
        self._pending_counts = None
        self._pending_sums = None

    def _gather_pending(self) -> Tensor | None:
        """Pending (counts | sums), summed over processes: float32 (K, 1 + D), or None if empty."""
        distributed = _world_size() > 1
        if self._pending_counts is None and not distributed:
            return None
        if self._pending_counts is None:
            # Every process must join the all_reduce, even one that saw no data.
            K, D = self.config.codebook_size, self.config.dim
            stats = torch.zeros(K, 1 + D, device=self.codebook.device)
        else:
            stats = torch.cat([self._pending_counts[:, None], self._pending_sums], dim=1)
        self._reset_pending()
        if distributed:
            torch.distributed.all_reduce(stats, op=torch.distributed.ReduceOp.SUM)
        if not bool(stats[:, 0].sum() > 0):
            return None
        return stats

    def _apply_moving_averages(self, counts: Tensor, sums: Tensor) -> None:
        """The EMA step of DESIGN.md on spread statistics: float32 (K,), (K, D)."""
        decay, eps, K = self.config.decay, self.config.epsilon, self.config.codebook_size
        size = decay * self.cluster_size + (1 - decay) * counts
        total = size.sum()
        size = (size + eps) / (total + K * eps) * total  # Laplace smoothing
        self.cluster_size.copy_(size)
        self.embed_sum.mul_(decay).add_(sums, alpha=1 - decay)
        self.codebook.copy_(self.embed_sum / size[:, None])

    @torch.no_grad()
    def _init_from_data(self, z: Tensor) -> None:
        """The "data" init: K random vectors of the first training batch become the codes."""
        K, N = self.config.codebook_size, z.shape[0]
        if N >= K:
            pick = torch.randperm(N, device=z.device)[:K]
        else:
            pick = torch.randint(N, (K,), device=z.device)  # too few vectors: repeat some
        codes = z[pick].contiguous()  # (K, D)
        if _world_size() > 1:
            torch.distributed.broadcast(codes, src=0)  # every process starts from rank 0's
        self.codebook.copy_(codes)
        self.embed_sum.copy_(codes)
        self.initialized.fill_(True)

    def _check_vectors(self, z: Tensor) -> None:
        D = self.config.dim
        if z.ndim != 2 or z.shape[1] != D or z.shape[0] == 0 or not z.is_floating_point():
            raise SomtokError(
                f"vectors of shape {tuple(z.shape)} and dtype {z.dtype} given; "
                f"expected a non-empty float tensor (N, {D})"
            )


def _initial_codebook(config: QuantizerConfig) -> Tensor:
    """Starting codes: float32 (K, D)."""
    K, D = config.codebook_size, config.dim
    if config.init == "normal":
        return torch.randn(K, D)  # the paper's
    if config.init == "uniform":
        return torch.empty(K, D).uniform_(-1 / K, 1 / K)  # the usual nn.Embedding init of VQ-VAEs
    return torch.zeros(K, D)  # "zeros", and "data" until its first batch


def _world_size() -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def nearest_codes(codebook: Tensor, z: Tensor, k: int = 1) -> Tensor:
    """The k nearest codes by squared L2, nearest first: (K, D), (N, D) -> int64 (N, k).

    ||z||^2 - 2 z.w + ||w||^2 without the ||z||^2 term (constant per vector), in float32, in
    chunks of vectors so that memory stays bounded; no one-hot matrix, no gradient.
    """
    with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
        w = codebook.detach().float()
        w_sq = (w * w).sum(-1)  # (K,)
        rows = max(1, NEAREST_CHUNK_PAIRS // w.shape[0])
        found = []
        for part in z.detach().float().split(rows):
            scores = torch.addmm(w_sq, part, w.T, alpha=-2)  # (n, K)
            if k == 1:
                found.append(scores.argmin(-1, keepdim=True))
            else:
                found.append(scores.topk(k, dim=-1, largest=False).indices)
        return torch.cat(found)


def code_statistics(counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Perplexity (float32), codes used and dead codes (int64) of a code histogram (K,)."""
    p = counts.float() / counts.sum().clamp(min=1)
    perplexity = torch.exp(-torch.special.xlogy(p, p).sum())
    codes_used = (counts > 0).sum()
    return perplexity, codes_used, counts.numel() - codes_used


# Topology metrics on a batch.


def quantisation_error(codebook: Tensor, z: Tensor) -> Tensor:
    """Mean Euclidean distance from each vector to its nearest code: (K, D), (N, D) -> float32.

    The usual SOM quantisation error (a distance, not the squared distance of the losses).
    """
    with torch.no_grad():
        best = nearest_codes(codebook, z)[:, 0]
        return (z.float() - codebook.float()[best]).norm(dim=-1).mean()


def topographic_error(codebook: Tensor, grid: SOMGrid, z: Tensor) -> Tensor:
    """Share of vectors whose two nearest codes are not grid neighbours: float32 in [0, 1].

    0 for a map whose grid follows the data; near 1 for codes placed on the grid at random.
    Neighbours are the 8 surrounding cells (wrapping on a toroidal grid).
    """
    if codebook.shape[0] < 2:
        raise SomtokError(f"a codebook of {codebook.shape[0]} code(s) given; expected 2 or more")
    best = nearest_codes(codebook, z, k=2)  # (N, 2)
    return (~grid.are_neighbours(best[:, 0], best[:, 1])).float().mean()
