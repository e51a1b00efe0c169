"""Encode images into one token file.

INPUT: image files, folders (their image files, not subfolders) or globs, in the order given.
Every image must already be the tokenizer's size unless --resize is given (then it is resized
and centre-cropped); a file that cannot be read is an error unless --skip-errors is given (then
it is left out and listed). Writes one .safetensors token file: indices int32 (B, h, w), the
source names and the tokenizer's id (DESIGN.md "Contracts"), atomically, and over an existing
file only with --force.
"""

from __future__ import annotations

import argparse
import sys

TOKENIZER_HELP = "tokenizer checkpoint folder or Hub repo id (default: the shipped one)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, globs")
    parser.add_argument("-o", "--output", required=True, help="token file to write (.safetensors)")
    parser.add_argument("--tokenizer", help=TOKENIZER_HELP)
    parser.add_argument(
        "--resize", action="store_true", help="resize and centre-crop to the tokenizer's size"
    )
    parser.add_argument(
        "--skip-errors", action="store_true", help="leave out unreadable images, listing them"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the encoder first: up to a few minutes once, then up to 1.35x faster on "
        "the CPU; worth it only for very many images",
    )


def run(args: argparse.Namespace) -> int:
    from somtok.fileio import check_writable
    from somtok.tokenizer.images import load_user_images
    from somtok.tokenizer.model import load_tokenizer
    from somtok.tokenizer.tokens import TokenFile, save_tokens

    check_writable(args.output, args.force)  # refuse before the work, not after
    tokenizer = load_tokenizer(args.tokenizer)
    found = load_user_images(
        args.inputs, tokenizer.config.image_size, resize=args.resize, skip_errors=args.skip_errors
    )
    for name, reason in found.skipped:
        print(f"somtok: skipped {name}: {reason}", file=sys.stderr)
    if args.compile:
        tokenizer.optimize_for_inference()
    indices = encode_all(tokenizer, found.images)
    tokens = TokenFile.for_tokenizer(tokenizer, indices, names=found.names)
    save_tokens(args.output, tokens, force=args.force)
    B, h, w = indices.shape
    print(
        f"{args.output}: {B} token grids of {h} x {w} (tokenizer {tokens.tokenizer_id}); "
        f"{len(found.skipped)} file(s) skipped"
    )
    return 0


def encode_all(tokenizer, pixels):
    """uint8 (N, 3, H, W) numpy -> int64 (N, h, w) on the CPU, batch by batch with a progress
    bar (shown on a terminal only)."""
    import torch
    from tqdm.auto import tqdm

    from somtok import limits

    step = limits.ENCODE_BATCH_SIZE
    parts = []
    with tqdm(total=len(pixels), desc="tokenize", unit="img", disable=None) as bar:
        for start in range(0, len(pixels), step):
            parts.append(tokenizer.encode(pixels[start : start + step]).cpu())
            bar.update(len(parts[-1]))
    return torch.cat(parts)
