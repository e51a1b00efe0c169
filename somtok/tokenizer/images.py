"""Reading image files safely and bringing them to the tokenizer's size.

Two kinds of images pass through here:

- a user's files (``somtok tokenize``, the app's uploads): read with ``read_image`` /
  ``load_user_images``. A bad file or a wrong size is an error unless the caller asks for
  ``skip_errors`` or ``resize``: the CLI never silently changes what a user asked for.
- training data (``data.py``): every image is brought to RGB and conformed (resize, centre
  crop) silently, and unreadable ones are skipped there.

Every image leaves as RGB. Arrays are uint8 (B, 3, H, W) in [0, 255].
"""

from __future__ import annotations

import glob
import io
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from einops import rearrange
from PIL import Image, ImageOps, UnidentifiedImageError

from somtok import limits
from somtok.errors import SomtokError

# Pillow's own decompression-bomb guard, tightened to our limit: it warns above the limit and
# refuses at twice it. We turn the warning into an error below, and this also guards code that
# decodes with Pillow before it reaches us (the app's upload widget).
Image.MAX_IMAGE_PIXELS = limits.MAX_IMAGE_PIXELS

# What a folder or a glob contributes: files with these endings, any case.
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm",
)  # fmt: skip

# Transparent pixels are shown on white, as a browser shows them on a white page.
BACKGROUND = (255, 255, 255)

# Modes holding more than 8 bits per channel; we scale them to 8 bits rather than clip.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

EXPECTED = "expected a PNG, JPEG, GIF, BMP, WebP or TIFF image"


class UserImages(NamedTuple):
    """A user's images, read and checked.

    images: uint8 (B, 3, H, W) in [0, 255]; names: the file paths, as found, in input order;
    skipped: (name, reason) for each file left out under ``skip_errors``.
    """

    images: np.ndarray
    names: list[str]
    skipped: list[tuple[str, str]]


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a visible file whose name ends with one of ``IMAGE_EXTENSIONS``."""
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB.

    16-bit and 32-bit grey are scaled to 8 bits; palette, CMYK, YCbCr and the like are converted;
    anything with transparency (RGBA, LA, PA, a palette or grey image with a transparent colour) is
    composited on white.
    """
    if img.mode in WIDE_MODES:
        img = _wide_to_grey(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return _on_white(img.convert("RGBA"))
    return img if img.mode == "RGB" else img.convert("RGB")


def _wide_to_grey(img: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) grey -> 8-bit grey, mapping 0..65535 onto 0..255."""
    wide = np.asarray(img).astype(np.float32)
    grey = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L")


def _on_white(img: Image.Image) -> Image.Image:
    """RGBA -> RGB, each pixel blended over white by its alpha."""
    canvas = Image.new("RGB", img.size, BACKGROUND)
    canvas.paste(img, mask=img.getchannel("A"))
    return canvas


def read_image(path: str | os.PathLike, draft: int | None = None) -> Image.Image:
    """Read one image file as RGB, refusing files or pixel counts beyond ``limits``.

    EXIF orientation is applied and an animation gives its first frame. Any failure raises
    SomtokError naming the file and what was expected. ``draft``: see ``read_image_bytes``.
    """
    name = str(path)
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise SomtokError(f"image file {name!r} {what}; {EXPECTED} file")
    _check_bytes(path.stat().st_size, name)
    return read_image_bytes(path.read_bytes(), name, draft)


def read_image_bytes(data: bytes, name: str = "upload", draft: int | None = None) -> Image.Image:
    """Decode one encoded image (the bytes of a file or an upload) as RGB.

    ``name`` only labels error messages. ``draft`` lets JPEG decode at a reduced scale that keeps
    both sides at least ``draft`` pixels (much faster for photos bound for 32 x 32).
    """
    _check_bytes(len(data), name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_pixels(img, name)
            if draft is not None:
                img.draft("RGB", (draft, draft))
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except SomtokError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise SomtokError(
            f"image {name!r} has too many pixels ({err}); expected at most "
            f"{limits.MAX_IMAGE_PIXELS:,} pixels"
        ) from err
    except UnidentifiedImageError as err:  # its message shows only an io.BytesIO repr
        why = "the file is empty" if not data else "not an image format Pillow knows"
        raise SomtokError(f"image {name!r} could not be read ({why}); {EXPECTED}") from err
    # Pillow's decoders raise many types on malformed input (OSError, SyntaxError, struct.error,
    # IndexError, ...); for a file from outside all of them mean "not a readable image".
    except Exception as err:
        raise SomtokError(f"image {name!r} could not be read ({err}); {EXPECTED}") from err


def _check_bytes(size: int, name: str) -> None:
    if size > limits.MAX_FILE_BYTES:
        raise SomtokError(
            f"image {name!r} is {size:,} bytes; expected at most {limits.MAX_FILE_BYTES:,} bytes"
        )


def _check_pixels(img: Image.Image, name: str) -> None:
    width, height = img.size
    if width * height > limits.MAX_IMAGE_PIXELS:
        raise SomtokError(
            f"image {name!r} is {width} x {height} = {width * height:,} pixels; "
            f"expected at most {limits.MAX_IMAGE_PIXELS:,} pixels"
        )


def conform(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bicubic, antialiased), then centre-crop to a square.

    The training-data conversion; user images go through it only with ``--resize``.
    """
    width, height = img.size
    if (width, height) == (size, size):
        return img
    scale = size / min(width, height)
    scaled = (max(size, round(width * scale)), max(size, round(height * scale)))
    if scaled != img.size:
        # Pillow widens the bicubic kernel when shrinking, so this antialiases.
        img = img.resize(scaled, Image.Resampling.BICUBIC)
    left = (scaled[0] - size) // 2
    top = (scaled[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def to_array(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> uint8 (3, H, W)."""
    return rearrange(np.asarray(img, dtype=np.uint8), "h w c -> c h w")


def expand_inputs(inputs: list[str | os.PathLike]) -> list[str]:
    """Files, folders and globs -> image file paths, in input order.

    A folder gives its image files (not its subfolders), sorted by name; a glob gives its image
    files, sorted. A file named directly is taken whatever its ending. An input that matches
    nothing is an error.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files = []
    for item in inputs:
        found = _expand_one(str(item))
        if not found:
            raise SomtokError(
                f"input {str(item)!r} matched no image file; expected an image file, a folder "
                f"or a glob holding files ending in {', '.join(IMAGE_EXTENSIONS)}"
            )
        files.extend(found)
    return files


def _expand_one(item: str) -> list[str]:
    if os.path.isdir(item):
        names = sorted(os.listdir(item))
        return [p for n in names if is_image_file(p := os.path.join(item, n)) and os.path.isfile(p)]
    if os.path.isfile(item):
        return [item]
    if glob.has_magic(item):
        return [p for p in sorted(glob.glob(item, recursive=True)) if is_image_file(p)]
    raise SomtokError(f"input {item!r} does not exist; expected an image file, a folder or a glob")


def load_user_images(
    inputs: list[str | os.PathLike],
    size: int | None,
    resize: bool = False,
    skip_errors: bool = False,
) -> UserImages:
    """Read a user's images into one uint8 (B, 3, H, W) array.

    inputs: files, folders or globs (see ``expand_inputs``). Without ``resize`` every image must
    already be ``size`` x ``size`` (``size=None``: all must share one size); with ``resize`` each
    is conformed to ``size``. An aspect ratio beyond ``limits.MAX_ASPECT_RATIO`` is an error either
    way. With ``skip_errors`` bad files are left out and listed in ``skipped``; without it the
    first bad file raises SomtokError.
    """
    if resize and size is None:
        raise SomtokError("resize needs an image size; got size=None")
    if size is not None and size < 1:
        raise SomtokError(f"image size must be a positive number of pixels; got {size}")
    expected = None if size is None else (size, size)  # (width, height)
    like = "the size this tokenizer reads" if size is not None else "the size of the first image"
    arrays, names, skipped = [], [], []
    for name in expand_inputs(inputs):
        try:
            img = _user_image(name, size if resize else None, expected, like)
        except SomtokError as err:
            if not skip_errors:
                raise
            skipped.append((name, str(err)))
            continue
        expected = expected or img.size  # with size=None the first image sets the size
        arrays.append(to_array(img))
        names.append(name)
    if not arrays:
        raise SomtokError(
            f"none of the {len(skipped)} input files could be read; first: {skipped[0][1]}"
        )
    return UserImages(np.stack(arrays), names, skipped)  # (B, 3, H, W)


def _user_image(
    name: str, resize_to: int | None, expected: tuple[int, int] | None, like: str
) -> Image.Image:
    """Read one user file; conform it to ``resize_to`` if given, else check it is ``expected``
    (``like`` says where that size comes from)."""
    img = read_image(name)
    width, height = img.size
    if max(width, height) / min(width, height) > limits.MAX_ASPECT_RATIO:
        raise SomtokError(
            f"image {name!r} is {width} x {height}; expected a side ratio of at most "
            f"{limits.MAX_ASPECT_RATIO:g}"
        )
    if resize_to is not None:
        return conform(img, resize_to)
    if expected is not None and img.size != expected:
        raise SomtokError(
            f"image {name!r} is {width} x {height}; expected {expected[0]} x {expected[1]}, "
            f"{like} (pass --resize to resize and centre-crop it)"
        )
    return img
