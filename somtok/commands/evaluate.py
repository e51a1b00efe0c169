"""Measure a tokenizer on a dataset: MSE and PSNR (on [0, 1] pixels), perplexity and codes used
(over the whole set's code histogram), topographic and quantisation error.

--data takes what `somtok train-tokenizer` takes: 'sample' (the bundled CIFAR-10 sample),
'cifar10', a folder of images, parquet file(s) or a Hub dataset id. Images are brought to the
tokenizer's size as training data is. Prints a table and the same numbers as JSON; --json PATH
also writes the JSON (atomically; over an existing file only with --force).
"""

from __future__ import annotations

import argparse
import json

from somtok.commands.tokenize import TOKENIZER_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", help=TOKENIZER_HELP)
    parser.add_argument("--data", default="sample", help="dataset (default: the bundled sample)")
    parser.add_argument("--split", default="test", help="split to evaluate on (default test)")
    parser.add_argument(
        "--limit",
        type=int,
        help="use the first N images of the split (unreadable ones among them are skipped and "
        "counted, so fewer may be measured)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the metrics as JSON here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")


def run(args: argparse.Namespace) -> int:
    from somtok import paths
    from somtok.fileio import atomic_output, check_writable
    from somtok.tokenizer.data import load_images
    from somtok.tokenizer.evaluate import evaluate_tokenizer
    from somtok.tokenizer.model import load_tokenizer

    if args.json:
        check_writable(args.json, args.force)  # refuse before the work, not after
    tokenizer = load_tokenizer(args.tokenizer)
    found = load_images(args.data, args.split, tokenizer.config.image_size, args.limit)
    metrics = evaluate_tokenizer(tokenizer, found.images, progress=True)
    report = {
        "tokenizer": str(args.tokenizer or paths.DEFAULT_TOKENIZER),
        "tokenizer_id": tokenizer.tokenizer_id,
        "data": args.data,
        "split": args.split,
        "skipped": found.skipped,
        **metrics,
    }
    print(table(metrics, tokenizer.codebook_size))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with atomic_output(args.json, args.force) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    return 0


ROWS = (  # metric, label, format
    ("images", "images", "{:d}"),
    ("mse", "MSE ([0, 1] pixels)", "{:.6f}"),
    ("psnr", "PSNR (dB)", "{:.2f}"),
    ("perplexity", "perplexity", "{:.1f}"),
    ("codes_used", "codes used", "{:d}"),
    ("topographic_error", "topographic error", "{:.4f}"),
    ("quantisation_error", "quantisation error", "{:.4f}"),
)


def table(metrics: dict, K: int) -> str:
    """The metrics as an aligned two-column text table."""
    lines = []
    for key, label, fmt in ROWS:
        value = fmt.format(metrics[key])
        if key == "codes_used":
            value += f" of {K} ({100 * metrics['usage']:.0f}%)"
        lines.append(f"{label:<22} {value}")
    return "\n".join(lines)
