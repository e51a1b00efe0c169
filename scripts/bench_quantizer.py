"""Benchmark the Kohonen update against EMA-VQ and the paper's dense one-hot formula.

Times, at the paper's sizes (N = 16,384 vectors, D = 64, K = 512 codes on a 32 x 16 grid):

  (a) forward plus update: nearest-code search, losses, statistics and the codebook update;
  (b) the update alone: from the chosen codes to the new codebook.

for KSOM hard, KSOM Gaussian, EMA-VQ (all through KohonenQuantizer) and the dense formula the
paper's code uses: a one-hot (N, K) matrix times the (K, K) neighbourhood, then (K, N) x (N, D).
Repetitions are interleaved (every method once per round, in a rotating order) so that drifts
in machine load hit all methods alike; medians are reported with the ratios.

    .venv/bin/python scripts/bench_quantizer.py [--rounds 30] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from somtok.errors import run_script
from somtok.tokenizer.quantizer import (
    KohonenQuantizer,
    QuantizerConfig,
    make_quantizer_config,
    nearest_codes,
)

METHODS = ("ksom-hard", "ksom-gaussian", "ema", "dense")


class DenseKohonen:
    """The paper's formulation: every update builds a one-hot (N, K) matrix of winners."""

    def __init__(self, config: QuantizerConfig, device: torch.device):
        self.quantizer = KohonenQuantizer(config).to(device)  # grid, schedule and state only

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        q = self.quantizer
        indices = nearest_codes(q.codebook, z)[:, 0]
        codes = q.codebook[indices]
        F.mse_loss(z, codes)  # the commitment loss, as the real forward computes it
        self.update(z, indices)
        return z + (codes - z).detach()

    @torch.no_grad()
    def update(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        q = self.quantizer
        one_hot = F.one_hot(indices, q.config.codebook_size).float()  # (N, K)
        spread = one_hot @ q.neighbourhood_matrix()  # (N, K): O(N K^2)
        q._apply_moving_averages(spread.sum(0), spread.T @ z)
        q.update_count.add_(1)


def make_steps(name: str, z: torch.Tensor, device: torch.device):
    """Two callables for one method: (a) forward + update, (b) update alone."""
    indices = nearest_codes(torch.randn(512, z.shape[1], device=device), z)[:, 0]
    if name == "dense":
        dense = DenseKohonen(make_quantizer_config("ksom-gaussian"), device)
        return (lambda: dense.forward(z)), (lambda: dense.update(z, indices))

    quantizer = KohonenQuantizer(make_quantizer_config(name)).to(device).train()

    def forward_and_update():
        quantizer(z)
        quantizer.update_codebook()

    def update_alone():
        counts = torch.bincount(indices, minlength=quantizer.config.codebook_size)
        quantizer._accumulate(z, indices, counts)
        quantizer.update_codebook()

    return forward_and_update, update_alone


def timed(fn, device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run(args) -> dict[str, dict[str, float]]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    z = torch.randn(args.vectors, 64, device=device)
    steps = {name: make_steps(name, z, device) for name in METHODS}
    times = {(name, part): [] for name in METHODS for part in "ab"}
    for r in range(args.warmup + args.rounds):
        order = METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]
        for name in order:
            for part, fn in zip("ab", steps[name], strict=True):
                seconds = timed(fn, device)
                if r >= args.warmup:
                    times[name, part].append(seconds)
    return {name: {part: statistics.median(times[name, part]) for part in "ab"} for name in METHODS}


def report(medians: dict[str, dict[str, float]], args) -> None:
    threads = torch.get_num_threads()
    print(
        f"N={args.vectors} D=64 K=512 grid 32x16, device={args.device}, threads={threads}, "
        f"medians of {args.rounds} interleaved rounds (torch {torch.__version__})"
    )
    print(f"{'method':<15}{'(a) forward+update ms':>24}{'(b) update ms':>16}")
    for name, m in medians.items():
        print(f"{name:<15}{1e3 * m['a']:>24.2f}{1e3 * m['b']:>16.3f}")
    ema, dense = medians["ema"], medians["dense"]
    print("ratios:")
    for name in ("ksom-hard", "ksom-gaussian"):
        a_ratio = medians[name]["a"] / ema["a"]
        b_speedup = dense["b"] / medians[name]["b"]
        print(
            f"  {name}: (a) {a_ratio:.3f}x EMA-VQ (target <= 1.1) "
            f"{'ok' if a_ratio <= 1.1 else 'MISSED'}; "
            f"(b) update {b_speedup:.0f}x faster than dense (target >= 50) "
            f"{'ok' if b_speedup >= 50 else 'MISSED'}"
        )
    print(f"  dense: (a) {dense['a'] / ema['a']:.2f}x EMA-VQ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=16_384, help="N (default 16384)")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report(run(args), args)


if __name__ == "__main__":
    sys.exit(run_script(main))
