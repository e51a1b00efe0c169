"""Measure the map walk against its baselines on real images, and the app's response times.

Smoothness (``walk.smoothness``) of walk, token swap and latent interpolation between pairs of
CIFAR-10 test images, each method given the full walk's number of frames; then the time of
each of the app's tab functions called directly (no server).

    .venv/bin/python scripts/bench_app.py                      # the shipped tokenizer
    .venv/bin/python scripts/bench_app.py --tokenizer runs/X --pairs 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from somtok.errors import run_script
from somtok.serve.app import SomtokApp, load_models
from somtok.tokenizer import walk
from somtok.tokenizer.data import load_images


def smoothness_table(tokenizer, images: np.ndarray, pairs: int, seed: int) -> None:
    tokens = tokenizer.encode(torch.from_numpy(np.array(images[: 2 * pairs])))  # (2P, h, w)
    grid = tokenizer.quantizer.grid
    found = {method: [] for method in walk.METHODS}
    lengths = []
    generator = torch.Generator().manual_seed(seed)
    for a, b in zip(tokens[0::2], tokens[1::2], strict=True):
        steps = max(walk.walk_length(grid, a, b), 2)
        lengths.append(steps)
        for method in walk.METHODS:
            frames = walk.interpolate(tokenizer, a, b, method, steps, generator)
            found[method].append(walk.smoothness(walk.decode_frames(tokenizer, frames)))

    print(f"{len(lengths)} CIFAR-10 test pairs, {statistics.mean(lengths):.1f} frames on average")
    header = (
        f"{'method':8} {'largest pixel change':>21} {'below swap':>11} {'mean pixel change':>18}"
    )
    print(header)
    for method, scores in found.items():
        top = statistics.mean(s.max for s in scores)
        mean = statistics.mean(s.mean for s in scores)
        wins = sum(s.max < w.max for s, w in zip(scores, found["swap"], strict=True))
        print(f"{method:8} {top:21.4f} {wins:>7}/{len(scores):<3} {mean:18.4f}")


def time_calls(app: SomtokApp, images: np.ndarray, repeats: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="somtok-bench-"))
    files = []
    for i in range(2):
        files.append(str(folder / f"{i}.png"))
        Image.fromarray(np.moveaxis(np.array(images[i]), 0, -1)).save(files[-1])
    calls = {
        "tokenize": lambda: app.tokenize(files[0]),
        "shift": lambda: app.shift(files[0], 2, 2),
        "interpolate (walk)": lambda: app.interpolate(files[0], files[1], 0, "walk"),
        "map (first call draws)": app.map_views,
    }
    if app.prior is not None:
        calls["sample 8"] = lambda: app.sample("none", count=8)
    for name, call in calls.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        print(f"{name:24} best {min(times) * 1000:8.1f} ms   first {times[0] * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", help="checkpoint folder (default: the shipped one)")
    parser.add_argument("--prior", help="checkpoint folder (default: the shipped one)")
    parser.add_argument("--data", default="cifar10", help="image source (default: cifar10)")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tokenizer, prior, note = load_models(args.tokenizer, args.prior)
    size = tokenizer.config.image_size
    images = load_images(args.data, "test", size, limit=2 * args.pairs).images
    print(f"tokenizer {tokenizer.tokenizer_id}, map {tokenizer.quantizer.grid.shape}")
    with torch.no_grad():
        smoothness_table(tokenizer, images, args.pairs, args.seed)
    if note:
        print(f"sampling is off: {note}")
    time_calls(SomtokApp(tokenizer, prior, note, dataset=args.data), images, args.repeats)


if __name__ == "__main__":
    sys.exit(run_script(main))
