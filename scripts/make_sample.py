"""Write the bundled CIFAR-10 sample (data/cifar10-sample/) from the full CIFAR-10 parquet files.

Takes the first PER_CLASS_TRAIN / PER_CLASS_TEST rows of each class, in file order (the source
rows are already shuffled), and keeps the JPEG bytes and the Hub layout (``img``, ``label`` with
its ClassLabel metadata) unchanged, so the sample reads exactly like the full dataset.

    .venv/bin/python scripts/make_sample.py [--source DIR] [--force]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from somtok import paths
from somtok.errors import run_script
from somtok.fileio import atomic_output
from somtok.tokenizer.data import cifar10_dir

PER_CLASS = {"train": 250, "test": 50}  # 2,500 + 500 images, about 2.8 MB of JPEG
MAX_BYTES = 3 * 1024 * 1024  # the repository should stay light


def pick_rows(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` rows of every class, in file order."""
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    return np.sort(keep)


def write_split(source: pa.Table, per_class: int, path) -> int:
    rows = pick_rows(source.column("label").to_numpy(), per_class)
    subset = source.take(pa.array(rows))
    with atomic_output(path, force=True) as tmp:
        pq.write_table(subset, tmp, compression="none")  # JPEG bytes do not compress further
    return subset.num_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=None, help="folder with CIFAR-10 {train,test}.parquet")
    parser.add_argument("--force", action="store_true", help="overwrite an existing sample")
    args = parser.parse_args(argv)
    source = args.source or cifar10_dir()
    if source is None:
        parser.error("no local CIFAR-10 found; pass --source or set SOMTOK_CIFAR10_DIR")
    for split, per_class in PER_CLASS.items():
        out = paths.SAMPLE_DATA / f"{split}.parquet"
        if out.exists() and not args.force:
            parser.error(f"{out} exists; pass --force to overwrite it")
        count = write_split(pq.read_table(f"{source}/{split}.parquet"), per_class, out)
        print(f"{out}: {count} rows, {out.stat().st_size:,} bytes")
    total = sum(f.stat().st_size for f in paths.SAMPLE_DATA.glob("*.parquet"))
    print(f"sample total: {total:,} bytes (limit {MAX_BYTES:,})")
    return 0 if total <= MAX_BYTES else 1


if __name__ == "__main__":
    sys.exit(run_script(main))
