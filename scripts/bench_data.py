"""Time loading a dataset split: the first load (decoding every image) and loads from the cache.

    .venv/bin/python scripts/bench_data.py [--source cifar10] [--split train] [--size 32]

Uses a fresh temporary cache unless --cache-dir is given, so the first load really decodes.
Also times one pass over the torch view, as a training epoch reads it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time

import numpy as np
import torch

from somtok.errors import run_script
from somtok.tokenizer import data


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def epoch_seconds(image_set: data.ImageSet, batch_size: int = 256) -> float:
    """One shuffled pass over the torch view through a DataLoader (no workers)."""
    loader = torch.utils.data.DataLoader(image_set.as_torch(), batch_size=batch_size, shuffle=True)
    start = time.perf_counter()
    for _images, _labels in loader:
        pass
    return time.perf_counter() - start


def bench(source: str, split: str, size: int, cache_dir: str) -> None:
    before = data.DECODE_COUNT
    first, first_s = timed(data.load_images, source, split, size, cache_dir=cache_dir)
    decoded = data.DECODE_COUNT - before
    print(f"source: {first.source}  images: {first.images.shape}  skipped: {first.skipped}")
    print(f"first load:  {first_s:7.2f} s  ({decoded} decoded, {decoded / first_s:,.0f} images/s)")

    before = data.DECODE_COUNT
    again, again_s = timed(data.load_images, source, split, size, cache_dir=cache_dir)
    print(f"cached load: {again_s:7.3f} s  ({data.DECODE_COUNT - before} decoded)")

    _, copy_s = timed(np.array, again.images)
    print(f"copy the whole memory map into memory: {copy_s:.3f} s")
    print(f"one epoch through the torch view (DataLoader, batch 256): {epoch_seconds(again):.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="cifar10")
    parser.add_argument("--split", default="train")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    if args.cache_dir:
        bench(args.source, args.split, args.size, args.cache_dir)
        return 0
    with tempfile.TemporaryDirectory(prefix="somtok-bench-") as cache_dir:
        bench(args.source, args.split, args.size, cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
