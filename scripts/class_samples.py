"""A sample sheet for the README: one row per class, drawn from the prior, decoded, labelled.

python scripts/class_samples.py -o docs/img/class_samples.png [--per-class 8 --guidance 3]
"""

from __future__ import annotations

import argparse
import sys

import torch
from einops import rearrange
from PIL import Image, ImageDraw

from somtok.errors import run_script
from somtok.prior.model import load_prior
from somtok.prior.sample import sample_tokens
from somtok.tokenizer.model import load_tokenizer

LABEL_WIDTH = 80  # pixels left of each row for the class name
SCALE = 2  # CIFAR images are 32 x 32: show them twice as large


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior")
    parser.add_argument("--tokenizer")
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default="docs/img/class_samples.png")
    args = parser.parse_args()

    prior, tokenizer = load_prior(args.prior), load_tokenizer(args.tokenizer)
    names = prior.config.class_names
    rows = []
    for index in range(len(names)):
        result = sample_tokens(
            prior,
            args.per_class,
            index,
            guidance_scale=args.guidance,
            top_k=args.top_k,
            seed=args.seed,
        )
        with torch.inference_mode():
            rows.append(tokenizer.decode_indices(result.indices))
    images = torch.stack(rows)  # (classes, per_class, 3, H, W)
    sheet = rearrange(images, "r c ch h w -> (r h) (c w) ch").mul(255).round().byte().numpy()
    picture = Image.fromarray(sheet)
    picture = picture.resize((picture.width * SCALE, picture.height * SCALE), Image.NEAREST)

    canvas = Image.new("RGB", (picture.width + LABEL_WIDTH, picture.height), "white")
    canvas.paste(picture, (LABEL_WIDTH, 0))
    draw = ImageDraw.Draw(canvas)
    row_height = picture.height // len(names)
    for index, name in enumerate(names):
        draw.text((6, index * row_height + row_height // 2 - 6), name, fill="black")
    canvas.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(run_script(main))
