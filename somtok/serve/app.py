"""The somtok app (Gradio): sample, interpolate across the map, look at the map, tokenize, shift.

``SomtokApp`` holds the models and one plain method per tab, callable without Gradio (tests
and scripts call them directly); a user's mistake raises SomtokError there. ``build_app`` lays
the tabs out and turns SomtokError into ``gr.Error``, a message in the page, so a bad upload never
stops the server. ``launch`` serves it on 127.0.0.1 unless told otherwise.

Uploads reach the methods as Gradio sent them (every image event runs with ``preprocess=False``)
and are read here (``images.read_image_bytes``) within ``somtok.limits``: Gradio itself
decodes nothing a user sent.

Images shown in the page are uint8 (H, W, 3), enlarged ``scale`` times with nearest pixels.
Letters: B batch, F frames, h w token grid, R S map rows and columns, K codes.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from somtok import limits, paths
from somtok.errors import SomtokError
from somtok.serve import render
from somtok.tokenizer import images as user_images
from somtok.tokenizer import walk

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
NO_CLASS = "none"

# Dataset pictures offered as ready-made interpolation pairs (classes of similar shape, where
# the dataset has them), and how many dataset images the usage heat map counts codes over (a
# few thousand settle the picture; more only costs time).
EXAMPLE_PAIRS = 4
EXAMPLE_CLASSES = (("cat", "dog"), ("airplane", "ship"), ("automobile", "truck"), ("horse", "deer"))
USAGE_IMAGES = 2000

# The map-colour key in the Tokenize tab is about this many pixels along its longer side.
MAP_KEY_PIXELS = 192

# Digits of the smoothness numbers shown: enough to tell methods apart.
SCORE_DIGITS = 4

# GIFs are written to a ring of this many file names: Gradio copies each into its own cache as
# the request returns, so the app's folder never grows.
GIF_RING = 16


@dataclass
class Scores:
    """Smoothness of one interpolation and of token swap between the same images (see
    ``walk.smoothness``): mean and largest pixel change between consecutive frames."""

    method: str
    frames: int
    ours: walk.Smoothness
    swap: walk.Smoothness

    def as_dict(self) -> dict[str, Any]:
        def numbers(score: walk.Smoothness) -> dict[str, float]:
            return {
                "mean_pixel_change": round(score.mean, SCORE_DIGITS),
                "largest_pixel_change": round(score.max, SCORE_DIGITS),
            }

        return {
            "method": self.method,
            "frames": self.frames,
            self.method: numbers(self.ours),
            "swap": numbers(self.swap),
        }


class Models(NamedTuple):
    """What the app serves: the tokenizer, the prior (None: sampling off) and why it is None."""

    tokenizer: Any  # SomTokenizer
    prior: Any  # SomPrior | None
    note: str


def load_models(tokenizer: str | None = None, prior: str | None = None) -> Models:
    """The tokenizer and the prior the app serves, and why sampling is off if it is.

    tokenizer / prior: checkpoint folders (or Hub ids); None means the shipped ones. A bad
    tokenizer, or a bad or mismatched prior asked for by name, raises SomtokError. Without an
    explicit prior, a missing or mismatched shipped prior only turns sampling off.
    """
    from somtok.prior.model import load_prior
    from somtok.tokenizer.model import load_tokenizer

    model = load_tokenizer(tokenizer)
    if prior is None and not paths.DEFAULT_PRIOR.is_dir():
        where = str(paths.DEFAULT_PRIOR)
        note = f"no prior is shipped in {where!r}; train one with `somtok train-prior`"
        return Models(model, None, f"{note} and start the app with --prior")
    try:
        loaded = load_prior(prior)
        loaded.check_tokenizer(model.tokenizer_id, "the app's tokenizer")
    except SomtokError as err:
        if prior is not None:
            raise SomtokError(f"--prior {prior!r}: {err}") from err
        return Models(model, None, f"the shipped prior cannot be used: {err}")
    return Models(model, loaded, "")


class SomtokApp:
    """The models behind the app and what each tab does.

    Args:
        tokenizer: a SomTokenizer (eval mode).
        prior: a SomPrior trained on ``tokenizer``'s tokens, or None (sampling is then off).
        prior_note: why ``prior`` is None, shown in the Sample tab.
        dataset: where the example images and the usage counts come from (see
            ``data.load_images``); None or an unreadable source leaves both out.
        scale: how many times pictures are enlarged for the page.
    """

    def __init__(
        self,
        tokenizer,
        prior=None,
        prior_note: str = "",
        dataset: str | None = "sample",
        scale: int = render.DEFAULT_SCALE,
    ):
        self.tokenizer = tokenizer.eval()
        self.prior = prior.eval() if prior is not None else None
        self.prior_note = prior_note or ("" if prior is not None else "no prior was given")
        self.dataset = dataset
        self.scale = scale
        self.grid = tokenizer.quantizer.grid
        self.size = tokenizer.config.image_size
        self.workdir = Path(tempfile.mkdtemp(prefix="somtok-app-"))
        atexit.register(shutil.rmtree, self.workdir, ignore_errors=True)
        self._gif_names = itertools.cycle(range(GIF_RING))
        self._map_views: tuple[Image.Image, Image.Image, Image.Image] | None = None
        self._dataset = None  # data.ImageSet, read on first use

    # ---- reading what a user sent ----

    def read_image(self, image, what: str = "image") -> torch.Tensor:
        """A user's image as the tokenizer takes it: uint8 (1, 3, size, size).

        ``image``: a file path, a Gradio file payload (dict with "path"), a PIL image or a
        uint8 array (H, W[, 3 or 4]). Any mode (RGBA, grey, palette) becomes RGB; any size is
        resized and centre-cropped, within the limits of ``somtok.limits``. ``what`` names the
        input in error messages.
        """
        name = None
        if isinstance(image, dict):  # an upload: errors name the user's file, not the cache
            name = image.get("orig_name")
            image = image.get("path")
        if image is None or (isinstance(image, str) and not image.strip()):
            raise SomtokError(f"{what} is missing; upload an image (PNG, JPEG, WebP, ...) first")
        if isinstance(image, (str, os.PathLike)):
            name = name or str(image)
            picture = _read_file(Path(image), name)
            what = f"{what} {name!r}"  # size errors below name the file too
        elif isinstance(image, Image.Image):
            picture = user_images.to_rgb(image)
        elif isinstance(image, np.ndarray):
            picture = user_images.to_rgb(_array_to_pil(image, what))
        else:
            raise SomtokError(f"{what} is a {type(image).__name__}; expected an image file")
        picture = self._conform(picture, what)
        return torch.from_numpy(user_images.to_array(picture).copy()).unsqueeze(0)  # (1, 3, H, W)

    def _conform(self, picture: Image.Image, what: str) -> Image.Image:
        width, height = picture.size
        if width * height > limits.MAX_IMAGE_PIXELS:
            raise SomtokError(
                f"{what} is {width} x {height} pixels; expected at most "
                f"{limits.MAX_IMAGE_PIXELS:,} pixels"
            )
        if max(width, height) / min(width, height) > limits.MAX_ASPECT_RATIO:
            raise SomtokError(
                f"{what} is {width} x {height}; expected a side ratio of at most "
                f"{limits.MAX_ASPECT_RATIO:g}"
            )
        return user_images.conform(picture, self.size)

    def _show(self, images: torch.Tensor) -> list[np.ndarray]:
        """float (B, 3, H, W) in [0, 1] -> B enlarged uint8 (H', W', 3) arrays."""
        return list(render.to_display(images, self.scale))

    # ---- Sample ----

    @property
    def class_names(self) -> list[str]:
        """Classes the prior knows, in label order (empty without a prior)."""
        return list(self.prior.config.class_names) if self.prior is not None else []

    @torch.no_grad()
    def sample(
        self,
        class_name: str | None = NO_CLASS,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        guidance: float = 1.0,
        seed: int = 0,
        count: int = 8,
    ) -> list[tuple[np.ndarray, str]]:
        """Sample ``count`` images from the prior: [(uint8 (H', W', 3), caption)].

        ``class_name`` "none" (or None) samples unconditionally; top_k 0 and top_p 1 turn those
        filters off; guidance 1 is plain conditional sampling.
        """
        from somtok.prior.sample import sample_tokens

        if self.prior is None:
            raise SomtokError(f"sampling is off: {self.prior_note}")
        count = _whole("count", count, 1, limits.MAX_SAMPLES)
        label = self._label(class_name)
        top_k = _whole("top_k", top_k, 0, self.grid.size)
        tokens = sample_tokens(
            self.prior,
            count,
            label,
            temperature=_real("temperature", temperature),
            top_k=top_k or None,
            top_p=_real("top_p", top_p),
            guidance_scale=_real("guidance", guidance),
            seed=_whole("seed", seed, 0, 2**63 - 1),
        ).indices  # (B, h, w)
        pictures = self._show(walk.decode_frames(self.tokenizer, tokens))
        name = class_name if label is not None else "no class"
        return [(p, f"{name} #{i + 1}") for i, p in enumerate(pictures)]

    def _label(self, class_name: str | None) -> int | None:
        if class_name in (None, "", NO_CLASS):
            return None
        if class_name not in self.class_names:
            raise SomtokError(
                f"class {class_name!r} is unknown to the prior; expected {NO_CLASS!r} or one "
                f"of {', '.join(self.class_names) or 'nothing (the prior has no classes)'}"
            )
        return self.class_names.index(class_name)

    # ---- Interpolate ----

    @torch.no_grad()
    def interpolate(
        self, image_a, image_b, steps: int = 0, method: str = "walk", seed: int = 0
    ) -> tuple[list[np.ndarray], str, dict[str, Any]]:
        """Frames from image A to image B, a looping GIF of them, and their smoothness.

        steps: frames, both ends included; 0 means the whole map walk (capped at
        ``limits.MAX_FRAMES``). method: "walk", "swap" or "latent". seed: the order of token
        swap. Returns (frames as uint8 (H', W', 3) arrays, GIF path, scores): ``scores`` holds
        the smoothness (``walk.smoothness``) of ``method`` and of token swap.
        """
        if method not in walk.METHODS:
            raise SomtokError(f"method must be one of {', '.join(walk.METHODS)}; got {method!r}")
        a = self.tokenizer.encode(self.read_image(image_a, "image A"))[0]  # (h, w)
        b = self.tokenizer.encode(self.read_image(image_b, "image B"))[0]
        steps = self._steps(steps, a, b)
        seed = _whole("seed", seed, 0, 2**63 - 1)

        images = {}
        for name in dict.fromkeys((method, "swap")):
            frames = walk.interpolate(
                self.tokenizer, a, b, name, steps, torch.Generator().manual_seed(seed)
            )
            images[name] = walk.decode_frames(self.tokenizer, frames)  # (F, 3, H, W)
        ours, swap = walk.smoothness(images[method]), walk.smoothness(images["swap"])
        scores = Scores(method, steps, ours, swap)

        pictures = render.to_display(images[method], self.scale)  # (F, H', W', 3)
        gif = self.workdir / f"interpolation-{next(self._gif_names)}.gif"
        render.save_gif(pictures, gif)
        return list(pictures), str(gif), scores.as_dict()

    def _steps(self, steps, a: torch.Tensor, b: torch.Tensor) -> int:
        steps = _whole("steps", steps, 0, limits.MAX_FRAMES)
        if steps == 1:
            raise SomtokError("steps must be 0 (the whole walk) or at least 2 (both ends)")
        if steps == 0:
            return min(max(walk.walk_length(self.grid, a, b), 2), limits.MAX_FRAMES)
        return steps

    # ---- Map ----

    def map_views(self) -> tuple[Image.Image, Image.Image, Image.Image]:
        """The codebook atlas, the usage heat map and the U-matrix, as RGB pictures.

        Usage counts the codes chosen for up to ``USAGE_IMAGES`` dataset images (none without
        a dataset: the map is then uniformly zero).
        """
        from somtok.tokenizer import plots

        if self._map_views is None:
            codebook = self.tokenizer.quantizer.codebook
            self._map_views = (
                plots.codebook_atlas(self.tokenizer),
                plots.usage_map(self._usage(), self.grid),
                plots.u_matrix_map(codebook, self.grid),
            )
        return self._map_views

    @torch.no_grad()
    def _usage(self) -> torch.Tensor:
        """int64 (K,): how often each code encodes the dataset images."""
        counts = torch.zeros(self.grid.size, dtype=torch.long)
        pictures = self.dataset_images()
        if pictures is None:
            return counts
        for chunk in torch.from_numpy(np.array(pictures[:USAGE_IMAGES])).split(
            limits.ENCODE_BATCH_SIZE
        ):
            counts += torch.bincount(
                self.tokenizer.encode(chunk).flatten(), minlength=counts.numel()
            )
        return counts

    def dataset_images(self) -> np.ndarray | None:
        """uint8 (N, 3, size, size) test images of ``dataset``, or None where it cannot be read."""
        if self._dataset is None and self.dataset is not None:
            from somtok.tokenizer.data import load_images

            try:
                self._dataset = load_images(self.dataset, "test", self.size, limit=USAGE_IMAGES)
            except SomtokError as err:
                logger.warning("no dataset images for the app: %s", err)
                self.dataset = None
        return None if self._dataset is None else self._dataset.images

    def example_pairs(self) -> list[list[str]]:
        """Pairs of dataset images written as PNGs, for the Interpolate tab's examples.

        Pairs of classes that share a shape (cat and dog, ...) where the dataset has them,
        else consecutive images.
        """
        pictures = self.dataset_images()
        if pictures is None or len(pictures) < 2:
            return []
        picks = self._example_picks() or list(range(2 * min(EXAMPLE_PAIRS, len(pictures) // 2)))
        files = []
        for i in picks:
            files.append(str(self.workdir / f"example-{i}.png"))
            render.save_png(np.moveaxis(np.asarray(pictures[i]), 0, -1), files[-1])
        return [files[i : i + 2] for i in range(0, len(files), 2)]

    def _example_picks(self) -> list[int]:
        """Indices of the first image of each class in ``EXAMPLE_CLASSES`` (empty if missing)."""
        labels, names = self._dataset.labels, self._dataset.class_names or []
        if labels is None or not all(n in names for pair in EXAMPLE_CLASSES for n in pair):
            return []
        firsts = {int(label): i for i, label in reversed(list(enumerate(labels)))}
        wanted = [names.index(n) for pair in EXAMPLE_CLASSES for n in pair]
        return [firsts[c] for c in wanted] if all(c in firsts for c in wanted) else []

    # ---- Tokenize and Shift ----

    @torch.no_grad()
    def tokenize(self, image) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """An image, its token grid in map colours, its reconstruction and the PSNR in dB.

        Returns (input as the tokenizer sees it, token grid, reconstruction) as enlarged uint8
        (H', W', 3) arrays, and the reconstruction's PSNR on [0, 1] pixels.
        """
        pixels = self.read_image(image).float() / 255  # (1, 3, H, W)
        tokens = self.tokenizer.encode(pixels)  # (1, h, w)
        recon = self.tokenizer.decode_indices(tokens)
        drawn = render.token_image(tokens[0], self.grid, self.scale * self.tokenizer.downsample)
        seen, rebuilt = self._show(torch.cat([pixels, recon]))
        return seen, drawn, rebuilt, psnr(pixels, recon)

    @torch.no_grad()
    def shift(self, image, rows: int = 1, cols: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The paper's shift: every token of ``image`` moved ``rows`` down and ``cols`` right.

        Returns (reconstruction, shifted reconstruction) as enlarged uint8 (H', W', 3) arrays.
        A 1-D map uses ``cols`` alone.
        """
        limit = max(self.grid.shape) - 1
        offset = (_whole("rows", rows, -limit, limit), _whole("cols", cols, -limit, limit))
        if self.grid.ndim == 1:
            offset = offset[1:]
        tokens = self.tokenizer.encode(self.read_image(image))  # (1, h, w)
        moved = walk.shift_tokens(self.grid, tokens, offset)
        pictures = walk.decode_frames(self.tokenizer, torch.cat([tokens, moved]))
        original, shifted = self._show(pictures)
        return original, shifted


def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of float [0, 1] images (B, 3, H, W); inf when equal."""
    mse = float(torch.mean((images.float() - reconstructions.float()) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _whole(name: str, value, low: int, high: int) -> int:
    """``value`` as an int in [low, high]; SomtokError naming ``name`` otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer() or not low <= number <= high:
        raise SomtokError(f"{name} must be a whole number from {low} to {high}; got {value!r}")
    return int(number)


def _read_file(path: Path, name: str) -> Image.Image:
    """An image file as RGB, named ``name`` in errors (an upload's own name, not Gradio's
    cache path)."""
    if not path.is_file():
        raise SomtokError(f"image {name!r} does not exist; {user_images.EXPECTED} file")
    size = path.stat().st_size
    if size > limits.MAX_FILE_BYTES:
        raise SomtokError(
            f"image {name!r} is {size:,} bytes; expected at most {limits.MAX_FILE_BYTES:,} bytes"
        )
    return user_images.read_image_bytes(path.read_bytes(), name)


def _real(name: str, value) -> float:
    """``value`` as a finite float; SomtokError naming ``name`` otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise SomtokError(f"{name} must be a number; got {value!r}")
    return number


def _array_to_pil(array: np.ndarray, what: str) -> Image.Image:
    channels_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4))
    if array.dtype != np.uint8 or not channels_ok:
        raise SomtokError(
            f"{what} is an array of shape {array.shape} and dtype {array.dtype}; expected uint8 "
            "(H, W), (H, W, 3) or (H, W, 4)"
        )
    return Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)


def in_page(fn: Callable) -> Callable:
    """``fn`` with a user's mistake (SomtokError) shown in the page as ``gr.Error``."""
    import gradio as gr

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SomtokError as err:
            raise gr.Error(str(err), print_exception=False) from err

    return call


# ---- the page ----

INTRO = """# somtok
An image tokenizer whose codebook is a Kohonen self-organising map: neighbouring codes on the map
decode to similar patches, so an image can walk to another across the map, one neighbour at a
time. Tokenizer `{tokenizer_id}`: {K} codes on a {map} map, {h} x {w} tokens per
{size} x {size} image."""

METHOD_HELP = (
    "walk: every token walks across the map to its target, one neighbour per frame. "
    "swap: tokens switch to their target in random order. "
    "latent: code vectors mixed, then quantised again."
)


def build_app(app: SomtokApp):
    """The page: one tab per task, every event named for the API (``/sample``, ...)."""
    import gradio as gr

    tokenizer = app.tokenizer
    h, w = (app.size // tokenizer.downsample,) * 2
    with gr.Blocks(title="somtok", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            INTRO.format(
                tokenizer_id=tokenizer.tokenizer_id,
                K=app.grid.size,
                map=" x ".join(map(str, app.grid.shape)),
                h=h,
                w=w,
                size=app.size,
            )
        )
        with gr.Tabs() as tabs:
            _sample_tab(app, tabs)
            _interpolate_tab(app)
            _map_tab(app)
            _tokenize_tab(app)
            _shift_tab(app)
    return demo


def _image_input(label: str, elem_id: str):
    import gradio as gr

    return gr.Image(
        label=label, type="filepath", sources=["upload", "clipboard"], height=200, elem_id=elem_id
    )


def _sample_tab(app: SomtokApp, tabs) -> None:
    import gradio as gr

    on = app.prior is not None
    with gr.Tab("Sample", id="sample"):
        if not on:
            gr.Markdown(f"**Sampling is off:** {app.prior_note}.")
        with gr.Row():
            with gr.Column(scale=1):
                class_name = gr.Dropdown(
                    [NO_CLASS, *app.class_names], value=NO_CLASS, label="class", interactive=on
                )
                temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="temperature")
                top_k = gr.Slider(0, app.grid.size, value=0, step=1, label="top-k (0: off)")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p (1: off)")
                guidance = gr.Slider(
                    0.0, 5.0, value=1.0, step=0.25, label="guidance (1: plain, 0: no class)"
                )
                seed = gr.Number(0, label="seed", precision=0, minimum=0)
                count = gr.Slider(1, limits.MAX_SAMPLES, value=8, step=1, label="count")
                run = gr.Button("Sample", variant="primary", interactive=on, elem_id="sample-run")
            with gr.Column(scale=2):
                gallery = gr.Gallery(
                    label="samples",
                    columns=4,
                    fit_columns=False,
                    format="png",
                    height="auto",
                    elem_id="sample-gallery",
                )
                picked = gr.Image(
                    label="picked sample",
                    type="filepath",
                    height=140,
                    interactive=False,
                    elem_id="sample-picked",
                )
                with gr.Row():
                    to_a = gr.Button("Use as image A", elem_id="sample-to-a")
                    to_b = gr.Button("Use as image B", elem_id="sample-to-b")
        run.click(
            in_page(app.sample),
            [class_name, temperature, top_k, top_p, guidance, seed, count],
            gallery,
            api_name="sample",
        )
        # Gradio hands the click over to a parameter annotated with the class itself.
        _picked.__annotations__ = {"evt": gr.SelectData}
        gallery.select(_picked, None, picked, api_name="pick_sample")
    app._sample_links = (picked, to_a, to_b, tabs)


def _picked(evt):
    """The file of the gallery item a user clicked (``evt``: gr.SelectData)."""
    value = evt.value if isinstance(evt.value, dict) else {}
    image = value.get("image", value)
    return image.get("path") if isinstance(image, dict) else None


def _interpolate_tab(app: SomtokApp) -> None:
    import gradio as gr

    with gr.Tab("Interpolate", id="interpolate"):
        with gr.Row():
            image_a = _image_input("image A", "interpolate-a")
            image_b = _image_input("image B", "interpolate-b")
        with gr.Row():
            steps = gr.Slider(
                0, limits.MAX_FRAMES, value=0, step=1, label="frames (0: the whole walk)"
            )
            method = gr.Radio(list(walk.METHODS), value="walk", label="method", info=METHOD_HELP)
            seed = gr.Number(0, label="seed (swap order)", precision=0, minimum=0)
        run = gr.Button("Interpolate", variant="primary", elem_id="interpolate-run")
        with gr.Row():
            gif = gr.Image(label="animation", type="filepath", format="gif", height=200)
            scores = gr.JSON(
                label="change between frames, pixels in [0, 1]",
                elem_id="interpolate-scores",
            )
        frames = gr.Gallery(
            label="frames",
            columns=8,
            fit_columns=False,
            format="png",
            elem_id="interpolate-frames",
        )
        pairs = app.example_pairs()
        if pairs:
            gr.Examples(
                pairs, [image_a, image_b], label="dataset examples", elem_id="interpolate-examples"
            )
        run.click(
            in_page(app.interpolate),
            [image_a, image_b, steps, method, seed],
            [frames, gif, scores],
            api_name="interpolate",
            preprocess=False,
        )

    picked, to_a, to_b, tabs = app._sample_links
    for button, target, name in ((to_a, image_a, "a"), (to_b, image_b, "b")):
        button.click(
            _send_picked, picked, [target, tabs], api_name=f"sample_to_{name}", preprocess=False
        )


def _send_picked(picked):
    """Copy the picked sample into an Interpolate input and show that tab."""
    import gradio as gr

    path = picked.get("path") if isinstance(picked, dict) else picked
    if not path:
        raise gr.Error("pick a sample in the gallery first", print_exception=False)
    return path, gr.Tabs(selected="interpolate")


def _map_tab(app: SomtokApp) -> None:
    import gradio as gr

    with gr.Tab("Map", id="map") as tab:
        gr.Markdown(
            "Every code decoded on its own, at its place on the map; how often the dataset "
            "images use each code; and the U-matrix, the mean distance of each code to its map "
            "neighbours (dark valleys inside regions, bright ridges between them)."
        )
        run = gr.Button("Draw the map", elem_id="map-run")
        with gr.Row():
            atlas = gr.Image(label="codebook atlas", format="png", elem_id="map-atlas")
            usage = gr.Image(label="usage", format="png")
            umatrix = gr.Image(label="U-matrix", format="png", elem_id="map-umatrix")
    gr.on(
        [tab.select, run.click],
        in_page(app.map_views),
        None,
        [atlas, usage, umatrix],
        api_name="map",
    )


def _tokenize_tab(app: SomtokApp) -> None:
    import gradio as gr

    with gr.Tab("Tokenize", id="tokenize"):
        with gr.Row():
            image = _image_input("image", "tokenize-image")
            with gr.Column():
                gr.Markdown("Tokens in map colours (the map's own colours below).")
                gr.Image(
                    render.map_key(app.grid, max(1, MAP_KEY_PIXELS // max(app.grid.shape))),
                    label="map colours",
                    height=140,
                    interactive=False,
                )
        run = gr.Button("Tokenize", variant="primary", elem_id="tokenize-run")
        with gr.Row():
            seen = gr.Image(label="input (as the tokenizer sees it)", format="png")
            tokens = gr.Image(label="token grid", format="png")
            recon = gr.Image(label="reconstruction", format="png")
            score = gr.Textbox(label="PSNR", elem_id="tokenize-psnr")
        run.click(
            in_page(_tokenize_for_page(app)),
            image,
            [seen, tokens, recon, score],
            api_name="tokenize",
            preprocess=False,
        )


def _tokenize_for_page(app: SomtokApp) -> Callable:
    def tokenize(image):
        seen, tokens, recon, value = app.tokenize(image)
        return seen, tokens, recon, f"{value:.2f} dB"

    return tokenize


def _shift_tab(app: SomtokApp) -> None:
    import gradio as gr

    limit = max(app.grid.shape) - 1
    with gr.Tab("Shift", id="shift"):
        gr.Markdown(
            "The paper's test of order: move every token by the same offset on the map. On a "
            "well-ordered map the image changes gradually; on an unordered codebook it scrambles."
        )
        with gr.Row():
            image = _image_input("image", "shift-image")
            with gr.Column():
                rows = gr.Slider(-limit, limit, value=1, step=1, label="rows (down)")
                cols = gr.Slider(-limit, limit, value=1, step=1, label="columns (right)")
                run = gr.Button("Shift", variant="primary", elem_id="shift-run")
        with gr.Row():
            original = gr.Image(label="reconstruction", format="png")
            shifted = gr.Image(label="shifted", format="png", elem_id="shift-shifted")
    gr.on(
        [run.click, rows.release, cols.release],
        in_page(app.shift),
        [image, rows, cols],
        [original, shifted],
        api_name="shift",
        preprocess=False,
    )


def launch(app: SomtokApp, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, block: bool = True):
    """Serve ``app`` on http://host:port; return the running ``gr.Blocks``.

    With ``block`` the call serves until Ctrl+C; without, it returns at once and the server
    runs in a thread (tests; ``demo.close()`` stops it). Uploads beyond ``limits.MAX_FILE_BYTES``
    are refused by Gradio before any of our code runs. SomtokError when the port cannot be had.
    """
    demo = build_app(app)
    # One request at a time: the CPU's cores already work on each one.
    demo.queue(default_concurrency_limit=1, max_size=limits.MAX_QUEUED_REQUESTS)
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            share=False,
            ssr_mode=False,
            max_file_size=limits.MAX_FILE_BYTES,
            allowed_paths=[str(app.workdir)],
            prevent_thread_lock=True,
            quiet=True,
            footer_links=["api"],
        )
    except OSError as err:
        raise SomtokError(f"cannot serve on {host}:{port} ({err}); pick another --port") from err
    logger.info("somtok app on %s", demo.local_url)
    if block:
        logger.info("press Ctrl+C to stop")
        demo.block_thread()
    return demo
