"""How good a tokenizer is on a set of images: the metrics of DESIGN.md "Quality metrics".

- mse, psnr: of ``decode_indices(encode(x))`` against x, on [0, 1] pixels; PSNR is
  10 log10(1 / MSE) of the MSE over the whole set (not a mean of per-image PSNRs);
- perplexity: exp of the entropy of the code histogram over the whole set, in [1, K];
- codes_used (and usage = codes_used / K): codes chosen at least once;
- topographic_error: share of latent vectors whose two nearest codes are not map neighbours;
- quantisation_error: mean Euclidean distance from a latent vector to its code.

Everything is first gathered as sums (``metric_sums``), so several processes can each take a
share of the images, add their sums, and get the same result as one process
(``metrics_from_sums``).

Shapes: N images, B batch, K codes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from einops import rearrange
from torch import Tensor
from tqdm.auto import tqdm

from somtok import limits
from somtok.errors import SomtokError
from somtok.tokenizer.quantizer import code_statistics, quantisation_error, topographic_error

if TYPE_CHECKING:
    from somtok.tokenizer.model import SomTokenizer


def evaluate_tokenizer(
    tokenizer: SomTokenizer,
    images: np.ndarray,
    batch_size: int = limits.ENCODE_BATCH_SIZE,
    progress: bool = False,
) -> dict[str, float]:
    """The metrics of ``tokenizer`` (used in eval mode) on uint8 images (N, 3, H, W)."""
    if len(images) == 0:
        raise SomtokError("no images to evaluate on; expected at least one")
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        sums = metric_sums(tokenizer, images, np.arange(len(images)), batch_size, progress)
    finally:
        tokenizer.train(was_training)
    return metrics_from_sums(sums)


@torch.no_grad()
def metric_sums(
    tokenizer: SomTokenizer,
    images: np.ndarray,
    picked: np.ndarray,
    batch_size: int = limits.ENCODE_BATCH_SIZE,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Sums over ``images[picked]`` (uint8 (N, 3, H, W)) that ``metrics_from_sums`` turns into
    metrics: float64 scalars, and the int64 (K,) code histogram, on the CPU. An empty
    ``picked`` gives zero sums."""
    K = tokenizer.codebook_size
    sums = {
        "images": torch.zeros((), dtype=torch.float64),
        "squared_error": torch.zeros((), dtype=torch.float64),
        "pixel_values": torch.zeros((), dtype=torch.float64),
        "vectors": torch.zeros((), dtype=torch.float64),
        "topographic_errors": torch.zeros((), dtype=torch.float64),
        "quantisation_error": torch.zeros((), dtype=torch.float64),
        "code_counts": torch.zeros(K, dtype=torch.int64),
    }
    batches = [picked[i : i + batch_size] for i in range(0, len(picked), batch_size)]
    shown = None if progress else True  # None: a bar on a terminal only
    for batch in tqdm(batches, desc="evaluate", unit="batch", disable=shown):
        pixels = torch.from_numpy(np.ascontiguousarray(images[np.sort(batch)]))  # uint8
        for name, value in _batch_sums(tokenizer, pixels).items():
            sums[name] += value.cpu()
    return sums


def _batch_sums(tokenizer: SomTokenizer, pixels: Tensor) -> dict[str, Tensor]:
    """The sums of one uint8 batch (B, 3, H, W)."""
    z = tokenizer.encode_latents(pixels)  # (B, D, h, w)
    indices = tokenizer.nearest_indices(z)  # (B, h, w)
    recon = tokenizer.decode_indices(indices).double()  # (B, 3, H, W) in [0, 1]
    target = pixels.to(recon.device).double() / 255.0
    vectors = rearrange(z, "b d h w -> (b h w) d").float()  # (N, D)
    n = vectors.shape[0]
    q = tokenizer.quantizer
    return {
        "images": torch.tensor(float(pixels.shape[0]), dtype=torch.float64),
        "squared_error": (recon - target).pow(2).sum(),
        "pixel_values": torch.tensor(float(target.numel()), dtype=torch.float64),
        "vectors": torch.tensor(float(n), dtype=torch.float64),
        "topographic_errors": topographic_error(q.codebook, q.grid, vectors).double() * n,
        "quantisation_error": quantisation_error(q.codebook, vectors).double() * n,
        "code_counts": torch.bincount(indices.flatten(), minlength=tokenizer.codebook_size),
    }


def metrics_from_sums(sums: dict[str, Tensor]) -> dict[str, float]:
    """mse, psnr (dB), perplexity, codes_used, usage, topographic_error, quantisation_error
    and the number of images."""
    values, vectors = float(sums["pixel_values"]), float(sums["vectors"])
    if values == 0 or vectors == 0:
        raise SomtokError("no images were evaluated; expected at least one")
    mse = float(sums["squared_error"]) / values
    perplexity, codes_used, _ = code_statistics(sums["code_counts"])
    return {
        "mse": mse,
        "psnr": psnr(mse),
        "perplexity": float(perplexity),
        "codes_used": int(codes_used),
        "usage": int(codes_used) / sums["code_counts"].numel(),
        "topographic_error": float(sums["topographic_errors"]) / vectors,
        "quantisation_error": float(sums["quantisation_error"]) / vectors,
        "images": round(float(sums["images"])),
    }


def psnr(mse: float) -> float:
    """PSNR in dB of an MSE on [0, 1] pixels (inf for a perfect reconstruction)."""
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf
