"""Walk from one image to another across the map and save the frames as a GIF and a PNG strip.

Both images are tokenized; with --method walk every token then moves along a shortest path on
the map to its counterpart in the other image, one neighbouring code per frame, and the frames are
decoded. --method swap (tokens switch in random order) and --method latent (code vectors mixed,
then quantised again) are the baselines to compare against. Prints the smoothness of the chosen
method and of token swap: the largest change of any one pixel between consecutive frames (the
worst jump) and the mean pixel change (pixels in [0, 1]).

Example: somtok interpolate cat.png dog.png -o walk.gif   (also writes walk.png)
"""

from __future__ import annotations

from pathlib import Path

METHODS = ("walk", "swap", "latent")


def add_arguments(parser):
    parser.add_argument("image_a", help="the first image (frame 0)")
    parser.add_argument("image_b", help="the last image")
    parser.add_argument(
        "-o", "--output", required=True, help="the GIF to write (a path ending in .gif)"
    )
    parser.add_argument(
        "--strip", help="the PNG strip of all frames to write (default: the GIF's path, .png)"
    )
    parser.add_argument(
        "--steps", type=int, help="frames, both ends included (default: the whole map walk)"
    )
    parser.add_argument("--method", choices=METHODS, default="walk", help="default: walk")
    parser.add_argument(
        "--tokenizer", help="tokenizer checkpoint folder or Hub id (default: the shipped one)"
    )
    parser.add_argument(
        "--resize", action="store_true", help="resize and centre-crop images of another size"
    )
    parser.add_argument("--seed", type=int, default=0, help="order of token swap (default: 0)")
    parser.add_argument(
        "--scale", type=int, default=4, help="enlarge frames this many times (default: 4)"
    )
    parser.add_argument("--frame-ms", type=int, default=100, help="GIF frame time (default: 100)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")


def run(args) -> int:
    import torch

    from somtok import limits
    from somtok.errors import SomtokError
    from somtok.fileio import atomic_output, check_writable
    from somtok.serve import render
    from somtok.tokenizer import walk
    from somtok.tokenizer.images import load_user_images
    from somtok.tokenizer.model import load_tokenizer

    gif_path, strip_path = _outputs(args)
    for path in (gif_path, strip_path):
        check_writable(path, args.force)
    if args.steps is not None:
        walk.check_steps(args.steps, limits.MAX_FRAMES)
    if not 1 <= args.scale <= limits.MAX_DISPLAY_SCALE or args.frame_ms < 1:
        raise SomtokError(
            f"--scale must be 1..{limits.MAX_DISPLAY_SCALE} and --frame-ms >= 1; got "
            f"{args.scale}, {args.frame_ms}"
        )

    tokenizer = load_tokenizer(args.tokenizer)
    size = tokenizer.config.image_size
    pictures = load_user_images([args.image_a, args.image_b], size, resize=args.resize)
    with torch.no_grad():
        a, b = tokenizer.encode(torch.from_numpy(pictures.images))  # (h, w) each
        scores = {}
        for method in dict.fromkeys((args.method, "swap")):
            generator = torch.Generator().manual_seed(args.seed)
            frames = walk.interpolate(tokenizer, a, b, method, args.steps, generator)
            images = walk.decode_frames(tokenizer, frames)  # (F, 3, H, W)
            scores[method] = walk.smoothness(images)
            if method == args.method:
                shown = render.to_display(images, args.scale)  # (F, H', W', 3)

    with atomic_output(gif_path, args.force) as tmp:
        render.save_gif(shown, tmp, args.frame_ms)
    with atomic_output(strip_path, args.force) as tmp:
        render.save_png(render.strip(shown), tmp)
    for method, score in scores.items():
        role = "" if method == args.method else " (baseline)"
        print(
            f"{method}{role}: {len(score.steps) + 1} frames; pixel change between frames: "
            f"largest {score.max:.4f}, mean {score.mean:.4f}"
        )
    print(f"wrote {gif_path} and {strip_path}")
    return 0


def _outputs(args) -> tuple[Path, Path]:
    from somtok.errors import SomtokError

    gif = Path(args.output)
    if gif.suffix.lower() != ".gif":
        raise SomtokError(f"--output {args.output!r} must end in .gif")
    strip = Path(args.strip) if args.strip else gif.with_suffix(".png")
    if strip.suffix.lower() != ".png":
        raise SomtokError(f"--strip {args.strip!r} must end in .png")
    if strip.resolve() == gif.resolve():
        raise SomtokError("--strip and --output name the same file")
    return gif, strip
