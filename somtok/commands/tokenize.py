"""Encode images into one token file.

INPUT: image files, folders (their image files, not subfolders) or globs, in the order given.
Every image must already be the tokenizer's size unless --resize is given (then it is resized
and centre-cropped); a file that cannot be read is an error unless --skip-errors is given (then
it is left out and listed). Writes one .safetensors token file: indices int32 (B, h, w), the
source names and the tokenizer's id (DESIGN.md "Contracts"), atomically, and over an existing
file only with --force. --precision bf16 trades exact tokens for speed (see its help).
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
        help="compile the encoder first: 5 s to a few minutes once, then at most a few per "
        "cent faster on the CPU (1.01x measured, see the README's benchmarks); worth it only "
        "for very many images",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32 (default): exact tokens. bf16: the encoder in bfloat16, 1.6x the speed of "
        "fp32 on a CPU with AVX-512 BF16, several times slower on one without; 99%% of tokens "
        "equal fp32's, the rest are near ties (same PSNR)",
    )


def run(args: argparse.Namespace) -> int:
    from somtok.tokenizer.images import load_user_images
    from somtok.tokenizer.model import load_tokenizer
    from somtok.tokenizer.tokens import TokenFile, check_token_output, save_tokens

    check_token_output(args.output, args.force)  # refuse before the work, not after
    tokenizer = load_tokenizer(args.tokenizer)
    found = load_user_images(
        args.inputs, tokenizer.config.image_size, resize=args.resize, skip_errors=args.skip_errors
    )
    for name, reason in found.skipped:
        print(f"somtok: skipped {name}: {reason}", file=sys.stderr)
    if args.compile or args.precision != "fp32":
        tokenizer.optimize_for_inference(precision=args.precision, compile=args.compile)
    indices = encode_all(tokenizer, found.images)
    tokens = TokenFile.for_tokenizer(tokenizer, indices, names=found.names)
    save_tokens(args.output, tokens, force=args.force)
    B, h, w = indices.shape
    print(
        f"{args.output}: {B} token grid{'s' * (B != 1)} of {h} x {w} "
        f"(tokenizer {tokens.tokenizer_id}); "
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
