"""The bad-input corpus: files a user may hand somtok by mistake, each with the outcome we promise.

Three kinds of case, each a ``Case`` naming what is made and what must happen to it:

- ``IMAGES``: broken, odd-mode, odd-size and hostile image files, and awkward file names;
- ``TOKENS``: token files of the wrong dtype, shape or range, another tokenizer's, hostile names;
- ``CHECKPOINTS``: checkpoint folders missing weights, holding a pickle, with a mismatched config.

Outcomes: ``CONVERT`` (read, with the documented conversion said in ``note``) or ``ERROR`` (one
SomtokError whose message contains ``match``: the file's own name unless said otherwise). Image
cases give the outcome without ``--resize`` (``outcome``) and with it (``resized``: also the
app's, which always resizes); converted images carry the pixels they must read as.

The registries are static (tests parametrise over their names); ``make_corpus(folder)`` writes
the files. As a script it writes the corpus and prints the table of cases::

    python tests/make_bad_inputs.py OUT [--tokenizer DIR --prior DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

CONVERT = "convert"
ERROR = "error"

SIZE = 32  # the tiny and cifar10 presets' image size: converted images are this size
HALF = SIZE // 2
WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)
JPEG_TOLERANCE = 8.0  # mean absolute error allowed on JPEG cases (blocks of solid colour)

# A PNG whose header claims 100,000 x 100,000 pixels (10 Gpx, 10 GB decoded) in under 1 kB.
BOMB_SIDE = 100_000
# A real image just past the 16 Mpx limit (16,008,001 px), compressing to a few kB.
OVER_LIMIT_SIDE = 4_001
# A token file's tokenizer id that no tokenizer of ours has.
FOREIGN_ID = "0123456789abcdef"


@dataclass(frozen=True)
class Case:
    """One corpus entry: what is made at ``path`` and what reading it must do.

    outcome: CONVERT or ERROR as the CLI meets it (images: without --resize). resized: images
    only, the outcome with --resize and in the app. match: text the error message contains.
    note: one line for people. pixels: uint8 (3, SIZE, SIZE) a converted image reads as (None:
    not checked), within ``tolerance`` mean absolute difference.
    """

    name: str
    outcome: str
    note: str
    match: str = ""
    resized: str = ""
    tolerance: float = 0.0
    make: Callable = field(default=None, compare=False, repr=False)
    path: Path | None = None
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "match", self.match or self.name)
        object.__setattr__(self, "resized", self.resized or self.outcome)


IMAGES: dict[str, Case] = {}
TOKENS: dict[str, Case] = {}
CHECKPOINTS: dict[str, Case] = {}


def case(registry: dict[str, Case], name: str, outcome: str, note: str, **kw):
    """Register the decorated maker under ``name`` in ``registry``."""

    def register(make: Callable) -> Callable:
        registry[name] = Case(name, outcome, note, make=make, **kw)
        return make

    return register


# ---- images: make(path) writes the file and returns the pixels it must read as, or None ----


def picture(*blocks) -> np.ndarray:
    """A white uint8 (SIZE, SIZE, 3) picture with each (colour, (rows, cols)) block painted."""
    out = np.full((SIZE, SIZE, 3), 255, np.uint8)
    for colour, where in blocks:
        out[where] = colour
    return out


def chw(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> (3, H, W)."""
    return np.ascontiguousarray(np.moveaxis(pixels, -1, 0))


LEFT, RIGHT, TOP = (slice(None), slice(0, HALF)), (slice(None), slice(HALF, None)), slice(0, HALF)
NOISE = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


@case(IMAGES, "good.png", CONVERT, "control: an ordinary RGB PNG")
def _good(path):
    Image.fromarray(NOISE).save(path)
    return chw(NOISE)


@case(IMAGES, "truncated.jpg", ERROR, "a JPEG cut at 60% of its bytes")
def _truncated(path):
    Image.fromarray(picture((RED, LEFT))).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])


@case(IMAGES, "empty.png", ERROR, "a zero-byte file")
def _empty(path):
    path.write_bytes(b"")


@case(IMAGES, "notes.png", ERROR, "a text file named .png")
def _text(path):
    path.write_text("these are my notes, not a picture\n", encoding="utf-8")


@case(IMAGES, "grey16.png", CONVERT, "16-bit grey PNG: scaled to 8 bits (value / 257), as RGB")
def _grey16(path):
    ramp = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) * 64).astype(np.uint16)  # 0..65472
    Image.fromarray(ramp).save(path)  # mode I;16
    grey = np.rint(ramp / 257.0).astype(np.uint8)
    return np.repeat(grey[None], 3, axis=0)


@case(IMAGES, "palette-transparent.png", CONVERT, "palette PNG, a transparent entry: on white")
def _palette(path):
    img = Image.new("P", (SIZE, SIZE), 0)
    img.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    img.paste(1, (HALF, 0, SIZE, SIZE))  # right half: entry 1, blue
    img.save(path, transparency=0)  # entry 0 (red, the left half) is clear
    return chw(picture((BLUE, RIGHT)))


@case(IMAGES, "cmyk.jpg", CONVERT, "CMYK JPEG: converted to RGB", tolerance=JPEG_TOLERANCE)
def _cmyk(path):
    ink = np.zeros((SIZE, SIZE, 4), np.uint8)
    ink[:, :HALF, 1:3] = 255  # left half: magenta and yellow ink make red
    Image.fromarray(ink, mode="CMYK").save(path, quality=95)
    return chw(picture((RED, LEFT)))


@case(
    IMAGES,
    "exif-rotated.jpg",
    CONVERT,
    "JPEG with EXIF orientation 6: turned as a viewer shows it",
    tolerance=JPEG_TOLERANCE,
)
def _exif(path):
    # Stored red on top; orientation 6 means "turn 90 degrees clockwise to show": red on the right.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(picture((RED, (TOP, slice(None))))).save(path, quality=95, exif=exif)
    return chw(picture((RED, RIGHT)))


@case(IMAGES, "animated.gif", CONVERT, "3-frame animated GIF: its first frame")
def _gif(path):
    frames = [Image.new("RGB", (SIZE, SIZE), colour) for colour in (RED, BLUE, WHITE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return chw(picture((RED, (slice(None), slice(None)))))


@case(
    IMAGES,
    "one-pixel.png",
    ERROR,
    "1 x 1: a size error without --resize; --resize enlarges it",
    resized=CONVERT,
)
def _one_pixel(path):
    Image.new("RGB", (1, 1), RED).save(path)
    return chw(picture((RED, (slice(None), slice(None)))))


@case(IMAGES, "wide.png", ERROR, "10,000 x 10: side ratio past the limit, even with --resize")
def _wide(path):
    Image.new("RGB", (10_000, 10), BLUE).save(path)


@case(
    IMAGES, "bomb.png", ERROR, "decompression bomb: claims 100,000 x 100,000 px in < 1 kB",
    match="pixels",
)  # fmt: skip
def _bomb(path):
    path.write_bytes(png_header_bomb(BOMB_SIDE))


@case(IMAGES, "over-limit.png", ERROR, "4,001 x 4,001 px: just past the limit", match="pixels")
def _over_limit(path):
    Image.new("L", (OVER_LIMIT_SIDE, OVER_LIMIT_SIDE)).save(path)


@case(IMAGES, "too-big.png", ERROR, "one byte past the file-size limit (never read)", match="bytes")
def _too_big(path):
    from somtok import limits

    with open(path, "wb") as f:
        f.truncate(limits.MAX_FILE_BYTES + 1)  # sparse: costs no disk


@case(IMAGES, "folder.png", ERROR, "an empty folder named like an image")
def _folder(path):
    path.mkdir(exist_ok=True)


@case(IMAGES, "my holiday – été 猫 #1.png", CONVERT, "spaces and non-ASCII in the name")
def _odd_name(path):
    Image.fromarray(NOISE[::-1]).save(path)
    return chw(NOISE[::-1])


def png_header_bomb(side: int) -> bytes:
    """A grey PNG claiming ``side`` x ``side`` pixels whose data holds only four rows."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    rows = zlib.compress(b"\x00" * (side + 1) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


# ---- token files: make(path, good) writes the file; good is a TokenFile of the tokenizer ----

# Names a hostile token file carries; detokenize must write every PNG inside its folder.
HOSTILE_NAMES = [
    "../../evil.png",
    "/tmp/somtok-absolute-evil.png",
    "..\\..\\windows-evil.png",
    "sub/../../../deep-evil",
    "..",
    "",
    ".hidden.png",
    "nul\x00byte.png",
    "C:\\Windows\\evil.png",
]


def _raw(path, good, tensors=None, **meta) -> None:
    """Write past save_tokens' checks: ``tensors`` (default the good int32 grids) with the good
    metadata, ``meta`` overriding it (None removes a key)."""
    import torch
    from safetensors.torch import save_file

    tensors = tensors if tensors is not None else {"indices": good.indices.to(torch.int32)}
    metadata = {k: v for k, v in {**good.metadata(), **meta}.items() if v is not None}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def _grids(good, fill=None, dtype=None):
    import torch

    indices = good.indices if fill is None else torch.full_like(good.indices, fill)
    return {"indices": indices.to(dtype or torch.int32)}


@case(TOKENS, "tokens-good.safetensors", CONVERT, "control: 2 grids written by save_tokens")
def _tokens_good(path, good):
    from somtok.tokenizer.tokens import save_tokens

    save_tokens(path, good, force=True)


@case(TOKENS, "tokens-float.safetensors", ERROR, "indices stored as float32", match="int32")
def _tokens_float(path, good):
    import torch

    _raw(path, good, _grids(good, dtype=torch.float32))


@case(TOKENS, "tokens-flat.safetensors", ERROR, "indices (B, h*w), not (B, h, w)", match="shape")
def _tokens_flat(path, good):
    flat = good.indices.flatten(1).int()  # (B, h*w)
    _raw(path, good, {"indices": flat}, latent_shape=json.dumps([flat.shape[1]]))


@case(TOKENS, "tokens-out-of-range.safetensors", ERROR, "an index equal to K", match="index <")
def _tokens_high(path, good):
    _raw(path, good, _grids(good, fill=good.codebook_size))


@case(TOKENS, "tokens-negative.safetensors", ERROR, "an index of -1", match="0 <= index")
def _tokens_negative(path, good):
    _raw(path, good, _grids(good, fill=-1))


@case(
    TOKENS, "tokens-other-tokenizer.safetensors", ERROR,
    "a sound file from another tokenizer (another id)", match="made by tokenizer",
)  # fmt: skip
def _tokens_foreign(path, good):
    _raw(path, good, tokenizer_id=FOREIGN_ID)


@case(
    TOKENS, "tokens-no-format.safetensors", ERROR, "safetensors, no token metadata", match="format"
)
def _tokens_no_format(path, good):
    _raw(path, good, format=None, tokenizer_id=None)


@case(TOKENS, "tokens-bad-names.safetensors", ERROR, "names metadata not JSON", match="names")
def _tokens_bad_names(path, good):
    _raw(path, good, names="[not json")


@case(TOKENS, "tokens-labels.safetensors", ERROR, "3 labels for 2 grids", match="labels")
def _tokens_labels(path, good):
    import torch

    _raw(path, good, {**_grids(good), "labels": torch.zeros(3, dtype=torch.int64)})


@case(
    TOKENS, "tokens-wrong-grid.safetensors", CONVERT,
    "2 x 2 grids where the tokenizer makes 8 x 8: decoded at their own size (it is convolutional)",
)  # fmt: skip
def _tokens_small_grid(path, good):
    _raw(path, good, {"indices": good.indices[:, :2, :2].int()}, latent_shape="[2, 2]")


@case(TOKENS, "tokens-text.safetensors", ERROR, "a text file named .safetensors")
def _tokens_text(path, good):
    path.write_text("not a token file\n", encoding="utf-8")


@case(TOKENS, "tokens-truncated.safetensors", ERROR, "a good token file cut in half")
def _tokens_truncated(path, good):
    from somtok.tokenizer.tokens import save_tokens

    save_tokens(path, good, force=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@case(
    TOKENS, "tokens-hostile-names.safetensors", CONVERT,
    "names with '..', absolute and Windows paths, NUL: one PNG each, all inside the folder",
)  # fmt: skip
def _tokens_hostile(path, good):
    from somtok.tokenizer.tokens import TokenFile, save_tokens

    B = len(HOSTILE_NAMES)
    grids = good.indices[:1].expand(B, *good.latent_shape).contiguous()  # (B, h, w)
    hostile = TokenFile(grids, good.tokenizer_id, good.codebook_size, good.map_shape, None,
                        HOSTILE_NAMES)  # fmt: skip
    save_tokens(path, hostile, force=True)


# ---- checkpoint folders: make(target, good) damages a copy of the good checkpoint ----


class Tripwire:
    """Unpickling this creates the folder ``marker``: proof that somebody loaded a pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker, 0o755, True))


def tripwire_marker(folder: Path) -> Path:
    """Where unpickling a checkpoint case's pickle in ``folder`` would leave its mark."""
    return folder / "PICKLE-WAS-LOADED"


def _edit_config(target: Path, **changes) -> None:
    config = json.loads((target / "config.json").read_text(encoding="utf-8"))
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config), encoding="utf-8")


def _config(target: Path) -> dict:
    return json.loads((target / "config.json").read_text(encoding="utf-8"))


for _kind in ("tok", "prior"):

    @case(CHECKPOINTS, f"{_kind}-no-weights", ERROR, "config.json, no weights",
          match="model.safetensors")  # fmt: skip
    def _no_weights(target):
        (target / "model.safetensors").unlink()

    @case(CHECKPOINTS, f"{_kind}-pickle-only", ERROR,
          "weights only as a pickle (pytorch_model.bin) that would run code if loaded",
          match="model.safetensors")  # fmt: skip
    def _pickle_only(target):
        (target / "model.safetensors").unlink()
        marker = tripwire_marker(target.parent)
        (target / "pytorch_model.bin").write_bytes(pickle.dumps(Tripwire(str(marker))))

    @case(CHECKPOINTS, f"{_kind}-truncated-weights", ERROR, "model.safetensors cut in half",
          match="weights")  # fmt: skip
    def _truncated_weights(target):
        data = (target / "model.safetensors").read_bytes()
        (target / "model.safetensors").write_bytes(data[: len(data) // 2])

    @case(CHECKPOINTS, f"{_kind}-bad-json", ERROR, "config.json is not JSON", match="config.json")
    def _bad_json(target):
        (target / "config.json").write_text("{ not json", encoding="utf-8")

    @case(CHECKPOINTS, f"{_kind}-empty", ERROR, "an empty folder", match="config.json")
    def _empty_folder(target):
        for path in target.iterdir():
            path.unlink()


@case(CHECKPOINTS, "tok-mismatched-config", ERROR, "config of a wider net than the weights",
      match="tok-mismatched-config")  # fmt: skip
def _tok_mismatch(target):
    _edit_config(target, channels=[2 * c for c in _config(target)["channels"]])


@case(CHECKPOINTS, "tok-changed-id", ERROR, "config.json's tokenizer_id edited",
      match="changed after it was saved")  # fmt: skip
def _tok_changed_id(target):
    _edit_config(target, tokenizer_id=FOREIGN_ID)


@case(CHECKPOINTS, "prior-mismatched-config", ERROR, "config of a wider net than the weights",
      match="do not match")  # fmt: skip
def _prior_mismatch(target):
    _edit_config(target, n_embd=2 * _config(target)["n_embd"])


@case(CHECKPOINTS, "prior-other-tokenizer", ERROR, "a sound prior of another tokenizer",
      match=FOREIGN_ID)  # fmt: skip
def _prior_foreign(target):
    _edit_config(target, tokenizer_id=FOREIGN_ID)


@case(CHECKPOINTS, "missing-folder", ERROR, "a checkpoint path that does not exist")
def _missing(target):
    shutil.rmtree(target)


# ---- writing it all ----


@dataclass
class Corpus:
    """The cases as made (``path`` and ``pixels`` filled in) and the good models behind them."""

    folder: Path
    images: dict[str, Case]
    tokens: dict[str, Case]
    checkpoints: dict[str, Case]
    tokenizer: Path
    prior: Path

    def all_cases(self) -> list[Case]:
        return [*self.images.values(), *self.tokens.values(), *self.checkpoints.values()]

    @property
    def good_image(self) -> Path:
        return self.images["good.png"].path

    @property
    def good_tokens(self) -> Path:
        return self.tokens["tokens-good.safetensors"].path

    @property
    def tripwire(self) -> Path:
        return tripwire_marker(self.folder / "checkpoints")


def make_models(folder: Path) -> tuple[Path, Path]:
    """A random-init tiny tokenizer and a tiny prior over its tokens, saved under ``folder``."""
    import torch

    from somtok.prior.model import PriorConfig, SomPrior
    from somtok.tokenizer.model import SomTokenizer, TokenizerConfig

    torch.manual_seed(0)
    tokenizer = SomTokenizer(TokenizerConfig.from_preset("tiny"))
    tokenizer.save_pretrained(folder / "tokenizer")
    config = PriorConfig.from_preset(
        "tiny",
        tokenizer_id=tokenizer.tokenizer_id,
        codebook_size=tokenizer.codebook_size,
        latent_shape=tokenizer.config.latent_shape,
    )
    SomPrior(config).save_pretrained(folder / "prior")
    return folder / "tokenizer", folder / "prior"


def make_corpus(
    folder: str | os.PathLike, tokenizer: str | None = None, prior: str | None = None
) -> Corpus:
    """Write every case under ``folder`` (images/, tokens/, checkpoints/) and return them.

    tokenizer, prior: good checkpoint folders the token and checkpoint cases derive from; both
    None: a random tiny pair is made in ``folder/models``.
    """
    import torch

    from somtok.tokenizer.model import load_tokenizer
    from somtok.tokenizer.tokens import TokenFile

    folder = Path(folder)
    if tokenizer is None or prior is None:
        tokenizer, prior = make_models(folder / "models")
    tokenizer, prior = Path(tokenizer), Path(prior)

    images = _made(IMAGES, folder / "images", lambda c, path: c.make(path))
    model = load_tokenizer(str(tokenizer))
    h, w = model.config.latent_shape
    grids = torch.arange(2 * h * w).reshape(2, h, w) % model.codebook_size  # (2, h, w)
    good = TokenFile.for_tokenizer(model, grids, names=["a.png", "b.png"])
    tokens = _made(TOKENS, folder / "tokens", lambda c, path: c.make(path, good))

    def damaged(c: Case, target: Path) -> None:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(prior if c.name.startswith("prior") else tokenizer, target)
        c.make(target)

    checkpoints = _made(CHECKPOINTS, folder / "checkpoints", damaged)
    return Corpus(folder, images, tokens, checkpoints, tokenizer, prior)


def _made(registry: dict[str, Case], folder: Path, make: Callable) -> dict[str, Case]:
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, spec in registry.items():
        path = folder / name
        made[name] = replace(spec, path=path, pixels=make(spec, path))
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="folder to write the corpus into")
    parser.add_argument("--tokenizer", help="a good tokenizer folder (default: a random tiny one)")
    parser.add_argument("--prior", help="a good prior folder for it (default: a random tiny one)")
    args = parser.parse_args(argv)
    corpus = make_corpus(args.output, args.tokenizer, args.prior)
    for c in corpus.all_cases():
        outcome = c.outcome if c.resized == c.outcome else f"{c.outcome}/{c.resized}"
        print(f"{outcome:<14} {c.path.relative_to(corpus.folder)!s:<44} {c.note}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
