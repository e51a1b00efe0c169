"""Sample token grids from the prior and decode them into images.

Writes two files: a token file (--output, the grids with the class as labels, readable by
`somtok detokenize`) and a PNG grid of the decoded images (--png, default: the output name with
.png). Neither is overwritten without --force. The prior must have been trained on the tokenizer
given (their tokenizer ids must match).

Guidance: logits = uncond + s * (cond - uncond); s = 1 (the default) is plain conditional
sampling, s = 0 unconditional, s > 1 follows the class more closely. Without --class the samples
are unconditional. The same seed, count and batch size give the same samples on one device.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from somtok.errors import SomtokError

logger = logging.getLogger(__name__)

DEFAULT_COUNT = 16
DEFAULT_BATCH_SIZE = 64  # somtok.prior.sample.DEFAULT_BATCH_SIZE, kept here to spare torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    models = parser.add_argument_group("models")
    models.add_argument("--prior", help="prior folder or Hub id (default checkpoints/prior)")
    models.add_argument(
        "--tokenizer", help="tokenizer folder or Hub id (default checkpoints/tokenizer)"
    )
    models.add_argument("--device", default="cpu", help="torch device (default cpu)")

    what = parser.add_argument_group("sampling")
    what.add_argument(
        "--class",
        dest="class_label",
        metavar="CLASS",
        help="class name (e.g. cat) or index; default none (unconditional)",
    )
    what.add_argument("-n", "--count", type=int, default=DEFAULT_COUNT, help="default 16")
    what.add_argument(
        "--temperature", type=float, default=1.0, help=">= 0; 0 is greedy (default 1)"
    )
    what.add_argument("--top-k", type=int, help="keep the k most likely codes (default all)")
    what.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (default 1)")
    what.add_argument(
        "--guidance-scale",
        "--guidance",
        type=float,
        default=1.0,
        help="classifier-free guidance s >= 0 (default 1: plain conditional)",
    )
    what.add_argument("--seed", type=int, default=0, help="default 0")
    what.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="samples per call (default 64)"
    )

    out = parser.add_argument_group("output")
    out.add_argument(
        "-o", "--output", default="samples.safetensors", help="token file (samples.safetensors)"
    )
    out.add_argument("--png", help="image grid (default: the output name with .png)")
    out.add_argument("--columns", type=int, default=8, help="images per row of the PNG (8)")
    out.add_argument("--force", action="store_true", help="overwrite existing outputs")


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """The token file and the PNG, refused early if they exist (without --force) or clash."""
    from somtok.fileio import check_writable
    from somtok.tokenizer.tokens import check_token_output

    tokens = check_token_output(args.output, args.force)
    png = check_writable(args.png or tokens.with_suffix(".png"), args.force)
    if tokens.resolve() == png.resolve():
        raise SomtokError(f"--output and --png are both {str(tokens)!r}; expected two files")
    if args.columns < 1:
        raise SomtokError(f"--columns {args.columns} is invalid; expected an integer >= 1")
    return tokens, png


def run(args: argparse.Namespace) -> int:
    import torch

    from somtok import paths
    from somtok.fileio import atomic_output
    from somtok.prior.model import load_prior
    from somtok.prior.sample import check_sampling, resolve_class, sample_tokens
    from somtok.tokenizer import plots
    from somtok.tokenizer.model import load_tokenizer
    from somtok.tokenizer.tokens import TokenFile, save_tokens

    token_path, png_path = output_paths(args)
    device = _device(args.device, torch)
    prior = load_prior(args.prior).to(device)
    # Check the sampling options against the prior before the tokenizer costs a load.
    options = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    class_index = resolve_class(prior.config, args.class_label)
    check_sampling(prior.config, class_index=class_index, num_samples=args.count, **options)
    tokenizer = load_tokenizer(args.tokenizer, device=device)
    name = args.tokenizer or f"{paths.DEFAULT_TOKENIZER} (the shipped one)"
    prior.check_tokenizer(tokenizer.tokenizer_id, f"tokenizer {name!r}")
    if args.guidance_scale not in (0, 1) and prior.config.class_dropout == 0:
        logger.warning("this prior was trained without class dropout: guidance may not help")

    result = sample_tokens(prior, args.count, args.class_label, **options, progress=True)
    images = tokenizer.decode_indices(result.indices.to(device)).cpu()

    names = [f"sample-{i:04d}" for i in range(args.count)]
    save_tokens(
        token_path,
        TokenFile.for_tokenizer(tokenizer, result.indices, result.labels, names),
        force=args.force,
    )
    with atomic_output(png_path, force=args.force) as tmp:
        plots.image_grid(images, args.columns).save(tmp, format="PNG")
    print(f"wrote {args.count} samples: {token_path} (token grids), {png_path} (images)")
    return 0


def _device(name: str, torch):
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise SomtokError(f"--device {name!r} is not a torch device: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SomtokError(f"--device {name!r}: CUDA is not available on this machine")
    return device
