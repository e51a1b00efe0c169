"""Turning tensors into pictures people look at: display arrays, frame strips, GIFs, token grids
drawn in map colours. Used by the app and by ``somtok interpolate``; imports no Gradio.

Arrays for display are uint8 (..., H, W, 3) in [0, 255], channels last, as Pillow and Gradio
take them. Letters: F frames, h w token-grid size, R S map rows and columns, K codes.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from somtok.tokenizer.grid import SOMGrid

# Nearest-neighbour enlargement for 32 x 32 images, which a browser would otherwise blur.
DEFAULT_SCALE = 4
# GIF frame time: a 32-frame walk plays in about three seconds.
FRAME_MS = 100
# Frames of the strip are separated by this many white pixels (after scaling).
STRIP_GAP = 2


def to_display(images: torch.Tensor, scale: int = 1) -> np.ndarray:
    """float (B, 3, H, W) in [0, 1] -> uint8 (B, H * scale, W * scale, 3), nearest-enlarged."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    array = rearrange(pixels.cpu().numpy(), "b c h w -> b h w c")
    return enlarge(array, scale)


def enlarge(array: np.ndarray, scale: int) -> np.ndarray:
    """uint8 (..., H, W, C) -> (..., H * scale, W * scale, C) by repeating pixels."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1; got {scale}")
    return array.repeat(scale, axis=-3).repeat(scale, axis=-2)


def strip(frames: np.ndarray, gap: int = STRIP_GAP) -> np.ndarray:
    """uint8 (F, H, W, 3) -> one row (H, F * W + (F - 1) * gap, 3) on white."""
    count, height, width, _ = frames.shape
    canvas = np.full((height, count * width + (count - 1) * gap, 3), 255, dtype=np.uint8)
    for f, frame in enumerate(frames):
        left = f * (width + gap)
        canvas[:, left : left + width] = frame
    return canvas


def save_gif(frames: np.ndarray, path: str | os.PathLike, frame_ms: int = FRAME_MS) -> None:
    """uint8 (F, H, W, 3) -> an endlessly looping GIF at ``path``."""
    pictures = [Image.fromarray(frame) for frame in frames]
    pictures[0].save(
        path, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0
    )


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """uint8 (H, W, 3) -> a PNG at ``path``."""
    Image.fromarray(array).save(path, format="PNG")


def map_colours(grid: SOMGrid) -> np.ndarray:
    """One colour per code, smooth over the map: uint8 (K, 3).

    On a 2-D map red grows down the rows and green along the columns, with blue balancing the
    two, so neighbouring codes get similar colours; a 1-D map runs along matplotlib's viridis.
    """
    coords = grid.coords(torch.arange(grid.size)).float()  # (K, ndim)
    extent = (torch.tensor(grid.shape).float() - 1).clamp(min=1)
    unit = (coords / extent).numpy()  # (K, ndim) in [0, 1]
    if grid.ndim == 1:
        from matplotlib import colormaps

        rgb = colormaps["viridis"](unit[:, 0])[:, :3]
    else:
        red, green = unit[:, 0], unit[:, 1]
        rgb = np.stack([red, green, 1 - (red + green) / 2], axis=1)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def token_image(indices: torch.Tensor, grid: SOMGrid, scale: int = 1) -> np.ndarray:
    """int (h, w) token grid -> uint8 (h * scale, w * scale, 3), each token in its map colour."""
    colours = map_colours(grid)
    return enlarge(colours[torch.as_tensor(indices).long().cpu().numpy()], scale)


def map_key(grid: SOMGrid, scale: int = 1) -> np.ndarray:
    """The map itself in map colours: uint8 (R * scale, S * scale, 3) (a 1-D map is one row)."""
    rows = grid.shape[0] if grid.ndim == 2 else 1
    return token_image(torch.arange(grid.size).reshape(rows, -1), grid, scale)
