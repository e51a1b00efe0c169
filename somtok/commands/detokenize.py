"""Decode a token file into PNG images.

TOKENS is a token file written by `somtok tokenize` (or by the prior's sampling); it must come
from the tokenizer given (their ids are compared). One PNG per token grid goes into --output,
named after the grid's source name (its base name, made safe: never a path outside the folder;
numbered where a name is missing or taken). Existing files are not overwritten without --force,
and each file is written atomically.
"""

from __future__ import annotations

import argparse
import os
import re
import unicodedata
from pathlib import Path

from somtok.commands.tokenize import TOKENIZER_HELP

MAX_STEM = 100  # characters kept of a source name
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")  # controls and what some file systems refuse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tokens", metavar="TOKENS", help="token file (.safetensors)")
    parser.add_argument("-o", "--output", required=True, help="folder for the PNG files")
    parser.add_argument("--tokenizer", help=TOKENIZER_HELP)
    parser.add_argument("--force", action="store_true", help="overwrite existing PNG files")


def run(args: argparse.Namespace) -> int:
    from somtok.errors import SomtokError
    from somtok.fileio import check_folder
    from somtok.tokenizer.model import load_tokenizer
    from somtok.tokenizer.tokens import load_tokens

    folder = Path(args.output)
    if folder.exists() and not folder.is_dir():
        raise SomtokError(f"--output {args.output!r} is a file; expected a folder")
    check_folder(folder)  # refuse before the work, not after
    tokenizer = load_tokenizer(args.tokenizer)
    tokens = load_tokens(args.tokens, tokenizer)
    targets = png_paths(tokens.names, folder)
    taken = [p for p in targets if p.exists()]
    if taken and not args.force:
        raise SomtokError(
            f"{len(taken)} output file(s) already exist, first {str(taken[0])!r}; pass --force "
            "to overwrite them"
        )
    write_images(tokenizer, tokens.indices, targets, args.force)
    print(f"{args.output}: {len(targets)} PNG image(s) from {args.tokens}")
    return 0


def write_images(tokenizer, indices, targets: list[Path], force: bool) -> None:
    """Decode int64 (B, h, w) grids batch by batch and write each image to its target."""
    from PIL import Image
    from tqdm.auto import tqdm

    from somtok import limits
    from somtok.fileio import atomic_output
    from somtok.tokenizer.plots import to_uint8

    step = limits.DECODE_BATCH_SIZE
    targets[0].parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(targets), desc="detokenize", unit="img", disable=None) as bar:
        for start in range(0, len(targets), step):
            pixels = to_uint8(tokenizer.decode_indices(indices[start : start + step]))
            for image, path in zip(pixels, targets[start : start + step], strict=True):
                with atomic_output(path, force) as tmp:
                    Image.fromarray(image).save(tmp, format="PNG")
            bar.update(len(pixels))


def png_paths(names: list[str], folder: Path) -> list[Path]:
    """One distinct ``folder/<stem>.png`` per name, in order; see ``safe_stem``.

    Collisions (compared without case, as some file systems do) get "-1", "-2", ...
    """
    from somtok.fileio import safe_child

    used: set[str] = set()
    paths = []
    for i, name in enumerate(names):
        stem = safe_stem(name) or f"{i:06d}"
        candidate, n = stem, 0
        while candidate.casefold() in used:
            n += 1
            candidate = f"{stem}-{n}"
        used.add(candidate.casefold())
        paths.append(safe_child(folder, f"{candidate}.png"))
    return paths


def safe_stem(name: str) -> str:
    """The base name of a source name without its extension, stripped of path syntax, control
    and reserved characters and leading dots; "" if nothing is left."""
    base = os.path.basename(str(name).replace("\\", "/"))
    stem = os.path.splitext(base)[0]
    stem = _UNSAFE.sub("_", unicodedata.normalize("NFC", stem))
    return stem.strip().lstrip(".")[:MAX_STEM].strip()
