"""Pictures of a tokenizer: reconstruction grids, the codebook atlas, usage and U-matrix maps.

Everything returns a ``PIL.Image`` (RGB) and is written with ``save_png`` (atomic). Images in
are float32 in [0, 1] or uint8, (B, 3, H, W), torch or numpy. Map pictures lay the codes out
at their grid position (R rows, S columns); a 1-D map of K codes wraps into rows of
ceil(sqrt(K)) codes, read left to right, top to bottom.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from somtok import limits
from somtok.fileio import atomic_output
from somtok.tokenizer.grid import SOMGrid

PAD = 2  # pixels of white between tiles
WHITE = 255


def to_uint8(images) -> np.ndarray:
    """(B, 3, H, W) float [0, 1] or uint8, torch or numpy -> numpy uint8 (B, H, W, 3)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        if images.is_floating_point():
            images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
        images = images.numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    return rearrange(images, "b c h w -> b h w c")


def tile(images: np.ndarray, rows: int, cols: int, pad: int = PAD, scale: int = 1) -> Image.Image:
    """Lay uint8 (B, H, W, 3) images out row by row on a white canvas of rows x cols cells.

    Cells past B stay white. ``scale`` enlarges the picture (nearest neighbour: pixels stay
    sharp, which is what one wants to see of 32 x 32 images).
    """
    count, height, width, _ = images.shape
    canvas = np.full(
        (rows * (height + pad) + pad, cols * (width + pad) + pad, 3), WHITE, dtype=np.uint8
    )
    for i in range(min(count, rows * cols)):
        r, c = divmod(i, cols)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        canvas[top : top + height, left : left + width] = images[i]
    picture = Image.fromarray(canvas)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


def image_grid(images, columns: int = 8, scale: int = 1) -> Image.Image:
    """Images (B, 3, H, W) in a grid ``columns`` wide."""
    pixels = to_uint8(images)
    columns = max(1, min(columns, len(pixels)))
    return tile(pixels, math.ceil(len(pixels) / columns), columns, scale=scale)


def reconstruction_grid(
    originals, reconstructions, columns: int = 8, scale: int = 1
) -> Image.Image:
    """Originals and their reconstructions in alternating rows (original row above)."""
    a, b = to_uint8(originals), to_uint8(reconstructions)
    if a.shape != b.shape:
        raise ValueError(f"originals {a.shape} and reconstructions {b.shape} differ in shape")
    columns = max(1, min(columns, len(a)))
    rows = []
    for start in range(0, len(a), columns):
        for part in (a, b):
            row = part[start : start + columns]
            pad = np.full((columns - len(row), *row.shape[1:]), WHITE, dtype=np.uint8)
            rows.append(np.concatenate([row, pad]))
    stacked = np.concatenate(rows)  # (2 * row count * columns, H, W, 3)
    return tile(stacked, len(rows), columns, scale=scale)


def map_layout(grid: SOMGrid) -> tuple[int, int]:
    """(rows, columns) of the picture of a map: the grid itself, or a wrapped 1-D map."""
    if grid.ndim == 2:
        return grid.shape[0], grid.shape[1]
    cols = math.ceil(math.sqrt(grid.size))
    return math.ceil(grid.size / cols), cols


@torch.no_grad()
def decode_codes(tokenizer) -> torch.Tensor:
    """Each code decoded as a token grid filled with it: float32 (K, 3, H, W) in [0, 1]."""
    K = tokenizer.quantizer.grid.size
    h, w = tokenizer.config.latent_shape
    codes = torch.arange(K, device=tokenizer.quantizer.codebook.device)
    outs = []
    for chunk in codes.split(limits.DECODE_BATCH_SIZE):
        grids = chunk.view(-1, 1, 1).expand(-1, h, w)  # (k, h, w): one code everywhere
        outs.append(tokenizer.decode_indices(grids).cpu())
    return torch.cat(outs)


def codebook_atlas(tokenizer) -> Image.Image:
    """Every code decoded as a uniform token grid, tiled at its position on the map."""
    rows, cols = map_layout(tokenizer.quantizer.grid)
    return tile(to_uint8(decode_codes(tokenizer)), rows, cols)


def map_values(values: torch.Tensor, grid: SOMGrid) -> np.ndarray:
    """Per-code values (K,) laid out as the map picture: float64 (rows, cols), NaN padding."""
    rows, cols = map_layout(grid)
    flat = np.full(rows * cols, np.nan)
    flat[: grid.size] = values.detach().cpu().double().numpy()
    return flat.reshape(rows, cols)


def u_matrix(codebook: torch.Tensor, grid: SOMGrid) -> torch.Tensor:
    """Mean L2 distance of each code to its map neighbours: float32 (K,).

    ``codebook``: (K, D). Low values inside a region, ridges at its borders: an ordered map
    shows smooth valleys, an unordered one noise.
    """
    neighbours = grid.are_neighbours(
        torch.arange(grid.size)[:, None], torch.arange(grid.size)[None, :]
    )  # (K, K) bool
    dist = torch.cdist(codebook.detach().float().cpu(), codebook.detach().float().cpu())
    total = (dist * neighbours).sum(1)
    return total / neighbours.sum(1).clamp(min=1)


def heat_map(values: torch.Tensor, grid: SOMGrid, title: str, log: bool = False) -> Image.Image:
    """Per-code values (K,) as a colour map at the codes' map positions (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    picture = map_values(values, grid)
    fig, ax = plt.subplots(figsize=(4, 4 * picture.shape[0] / max(picture.shape[1], 1) + 0.6))
    norm = LogNorm(vmin=max(np.nanmin(picture), 1e-3)) if log else None
    shown = ax.imshow(np.where(picture > 0, picture, np.nan) if log else picture, norm=norm)
    fig.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    plt.close(fig)
    return image


def usage_map(counts: torch.Tensor, grid: SOMGrid) -> Image.Image:
    """How often each code was chosen (K,), on a log colour scale."""
    return heat_map(counts.float(), grid, "code usage (count)", log=True)


def u_matrix_map(codebook: torch.Tensor, grid: SOMGrid) -> Image.Image:
    """The U-matrix of ``codebook`` (K, D) as a colour map."""
    return heat_map(u_matrix(codebook, grid), grid, "U-matrix (mean distance to neighbours)")


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """Write ``image`` as PNG atomically, replacing an older picture of the same name."""
    with atomic_output(path, force=True) as tmp:
        image.save(tmp, format="PNG")
