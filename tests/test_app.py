"""The app: every tab's function called directly, then through a real server on 127.0.0.1 with
``gradio_client``, bad inputs included; and the ``interpolate`` and ``serve`` commands."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from somtok import limits
from somtok.cli import main
from somtok.errors import SomtokError
from somtok.prior.model import PriorConfig, SomPrior
from somtok.serve.app import SomtokApp, load_models, psnr
from somtok.serve.render import FRAME_MS
from somtok.tokenizer.model import SomTokenizer, TokenizerConfig

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A random-init tiny tokenizer and a tiny prior over its tokens, saved as checkpoints."""
    folder = tmp_path_factory.mktemp("app-models")
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


@pytest.fixture(scope="module")
def app(checkpoints):
    tokenizer, prior, note = load_models(*map(str, checkpoints))
    assert prior is not None and note == ""
    return SomtokApp(tokenizer, prior, note)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """User files of every kind: RGB, RGBA, grey, not an image, too many pixels, too big."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / "rgb.png")
    rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: must come out white
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(folder / "grey.jpg")
    (folder / "notes.png").write_text("not an image")
    side = int(limits.MAX_IMAGE_PIXELS**0.5) + 100
    Image.new("L", (side, side)).save(folder / "huge.png")  # compresses to a few kB
    with open(folder / "big.png", "wb") as f:
        f.truncate(limits.MAX_FILE_BYTES + 1)
    return folder


def gif_frames_ms(path) -> int:
    """Total play time of a 128 x 128 GIF in ms (Pillow merges identical frames, adding up
    their times, so the time counts the frames)."""
    total = 0
    with Image.open(path) as animation:
        assert animation.size == (128, 128)
        for i in range(animation.n_frames):
            animation.seek(i)
            total += animation.info["duration"]
    return total


# ---- the tab functions, called directly ----


def test_images_of_any_mode_come_in_as_rgb_at_the_tokenizer_size(app, pictures):
    for name in ("rgb.png", "rgba.png", "grey.jpg"):
        image = app.read_image(str(pictures / name))
        assert image.dtype == torch.uint8 and image.shape == (1, 3, 32, 32)
    assert bool((app.read_image(str(pictures / "rgba.png")) == 255).all())
    array = np.zeros((40, 40, 4), dtype=np.uint8)
    assert app.read_image(array).shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    "name, message",
    [
        ("notes.png", "could not be read"),
        ("huge.png", "pixels"),
        ("big.png", "bytes"),
        ("missing.png", "does not exist"),
    ],
)
def test_bad_files_are_user_errors(app, pictures, name, message):
    with pytest.raises(SomtokError, match=message):
        app.tokenize(str(pictures / name))


def test_missing_inputs_are_user_errors(app, pictures):
    with pytest.raises(SomtokError, match="image A is missing"):
        app.interpolate(None, str(pictures / "rgb.png"))
    with pytest.raises(SomtokError, match="missing"):
        app.shift({"path": None}, 1, 1)


def test_sample_gives_count_pictures_and_checks_its_settings(app):
    shown = app.sample(app.class_names[3], 1.0, 10, 0.9, 2.0, 7, 3)
    assert [caption for _, caption in shown] == [f"{app.class_names[3]} #{i}" for i in (1, 2, 3)]
    assert all(p.shape == (128, 128, 3) and p.dtype == np.uint8 for p, _ in shown)
    again = app.sample(app.class_names[3], 1.0, 10, 0.9, 2.0, 7, 3)
    assert all(np.array_equal(p, q) for (p, _), (q, _) in zip(shown, again, strict=True))
    with pytest.raises(SomtokError, match="unicorn"):
        app.sample("unicorn")
    with pytest.raises(SomtokError, match="count"):
        app.sample(count=limits.MAX_SAMPLES + 1)


def test_sampling_off_says_why(checkpoints):
    tokenizer, _, _ = load_models(str(checkpoints[0]), str(checkpoints[1]))
    off = SomtokApp(tokenizer, None, "no prior here", dataset=None)
    with pytest.raises(SomtokError, match="sampling is off: no prior here"):
        off.sample()


@pytest.mark.parametrize("method", ["walk", "swap", "latent"])
def test_interpolate_gives_frames_gif_and_scores(app, pictures, method):
    frames, gif, scores = app.interpolate(
        str(pictures / "rgb.png"), str(pictures / "grey.jpg"), 6, method
    )
    assert len(frames) == 6 and frames[0].shape == (128, 128, 3)
    assert gif_frames_ms(gif) == 6 * FRAME_MS
    assert scores["method"] == method and scores["frames"] == 6
    assert set(scores) == {"method", "frames", method, "swap"}
    numbers = scores[method]
    assert 0 <= numbers["mean_pixel_change"] <= numbers["largest_pixel_change"] <= 1


def test_interpolate_refuses_bad_settings(app, pictures):
    image = str(pictures / "rgb.png")
    with pytest.raises(SomtokError, match="method"):
        app.interpolate(image, image, 4, "teleport")
    with pytest.raises(SomtokError, match="steps"):
        app.interpolate(image, image, 1)
    with pytest.raises(SomtokError, match="steps"):
        app.interpolate(image, image, limits.MAX_FRAMES + 1)


def test_tokenize_shows_tokens_reconstruction_and_psnr(app, pictures):
    seen, tokens, recon, score = app.tokenize(str(pictures / "rgb.png"))
    assert seen.shape == tokens.shape == recon.shape == (128, 128, 3)
    # Each token is a block of one map colour: 4 pixels per token, 4 times enlarged.
    assert len(np.unique(tokens[:16, :16].reshape(-1, 3), axis=0)) == 1
    # The same PSNR, up to rounding, from the pictures shown (uint8, every 4th pixel).
    shown = [torch.from_numpy(p[::4, ::4]).float() / 255 for p in (seen, recon)]
    assert score == pytest.approx(psnr(*shown), abs=0.05)


def test_shift_by_zero_is_the_reconstruction(app, pictures):
    original, shifted = app.shift(str(pictures / "rgb.png"), 0, 0)
    assert np.array_equal(original, shifted)
    with pytest.raises(SomtokError, match="rows"):
        app.shift(str(pictures / "rgb.png"), 99, 0)


def test_examples_are_pairs_of_dataset_images(app):
    pairs = app.example_pairs()
    assert len(pairs) == 4 and all(len(pair) == 2 for pair in pairs)
    for path in (p for pair in pairs for p in pair):
        with Image.open(path) as picture:
            assert picture.size == (32, 32) and picture.mode == "RGB"


def test_map_views_are_pictures(app):
    atlas, usage, umatrix = app.map_views()
    assert all(isinstance(p, Image.Image) and p.mode == "RGB" for p in (atlas, usage, umatrix))


# ---- loading models: one clear line for a bad checkpoint ----


def test_bad_checkpoints_are_one_clear_error(checkpoints, tmp_path):
    tokenizer_dir, prior_dir = map(str, checkpoints)
    with pytest.raises(SomtokError, match="tokenizer"):
        load_models(str(tmp_path / "nothing"), prior_dir)
    with pytest.raises(SomtokError, match="--prior"):
        load_models(tokenizer_dir, str(tmp_path))
    other = SomTokenizer(TokenizerConfig.from_preset("tiny"))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(SomtokError, match="--prior.*tokenizer_id"):
        load_models(str(tmp_path / "other"), prior_dir)


def test_serve_command_reports_a_bad_tokenizer_in_one_line(tmp_path, capsys):
    assert main(["serve", "--tokenizer", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("somtok: error:") and "\n" not in err


# ---- the interpolate command ----


def test_interpolate_command_writes_gif_and_strip(checkpoints, pictures, tmp_path, capsys):
    args = ["interpolate", str(pictures / "rgba.png"), str(pictures / "rgb.png")]
    out = tmp_path / "walk.gif"
    common = ["-o", str(out), "--tokenizer", str(checkpoints[0]), "--steps", "5"]

    assert main([*args, *common]) == 2  # rgb.png is 48 x 40: a size error without --resize
    assert "--resize" in capsys.readouterr().err
    assert main([*args, *common, "--resize"]) == 0
    printed = capsys.readouterr().out
    assert "walk: 5 frames" in printed and "swap (baseline): 5 frames" in printed
    assert gif_frames_ms(out) == 5 * FRAME_MS
    with Image.open(tmp_path / "walk.png") as strip:
        assert strip.size == (5 * 128 + 4 * 2, 128)
    assert main([*args, *common, "--resize"]) == 2  # exists; needs --force
    assert main([*args, *common, "--resize", "--force", "--method", "latent"]) == 0


# ---- a real server, driven through gradio_client ----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    """``somtok serve`` in a process of its own, on a free port; yields its URL."""
    import subprocess
    import sys

    port = free_port()
    command = [sys.executable, "-m", "somtok", "serve", "--port", str(port)]
    command += ["--tokenizer", str(checkpoints[0]), "--prior", str(checkpoints[1])]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for(url, process, log_path)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def _wait_for(url: str, process, log_path, timeout_s: float = 300) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"somtok serve exited: {log_path.read_text()}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.5)
    pytest.fail(f"somtok serve did not answer within {timeout_s} s: {log_path.read_text()}")


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    folder = tmp_path_factory.mktemp("downloads")
    return Client(server, verbose=False, analytics_enabled=False, download_files=str(folder))


@pytest.mark.slow
def test_every_tab_answers_through_the_server(client, pictures):
    from gradio_client import handle_file

    rgb, grey = handle_file(str(pictures / "rgb.png")), handle_file(str(pictures / "grey.jpg"))
    samples = client.predict("none", 1.0, 0, 1.0, 1.0, 0, 3, api_name="/sample")
    assert len(samples) == 3 and all(os.path.isfile(s["image"]) for s in samples)

    frames, gif, scores = client.predict(rgb, grey, 0, "walk", 0, api_name="/interpolate")
    assert len(frames) == scores["frames"] >= 2 and gif.endswith(".gif")
    assert scores["walk"]["largest_pixel_change"] >= scores["walk"]["mean_pixel_change"] >= 0

    atlas, usage, umatrix = client.predict(api_name="/map")
    assert all(os.path.isfile(p) for p in (atlas, usage, umatrix))
    *shown, score = client.predict(handle_file(str(pictures / "rgba.png")), api_name="/tokenize")
    assert score.endswith(" dB") and all(os.path.isfile(p) for p in shown)
    original, shifted = client.predict(rgb, 2, -1, api_name="/shift")
    assert Image.open(shifted).size == (128, 128)


@pytest.mark.slow
def test_bad_inputs_are_errors_in_the_page_and_the_server_keeps_serving(client, pictures):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    rgb = handle_file(str(pictures / "rgb.png"))
    cases = [
        ((handle_file(str(pictures / "notes.png")),), "/tokenize", "notes.png"),
        ((handle_file(str(pictures / "huge.png")),), "/tokenize", "pixels"),
        ((None,), "/tokenize", "missing"),
        ((rgb, None, 0, "walk", 0), "/interpolate", "image B is missing"),
        ((rgb, rgb, 0, "teleport", 0), "/interpolate", "method"),
        (("unicorn", 1.0, 0, 1.0, 1.0, 0, 2), "/sample", "unicorn"),
        ((rgb, 500, 0), "/shift", "rows"),
    ]
    for args, endpoint, message in cases:
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name=endpoint)
    with pytest.raises(ValueError, match="maximum file size"):
        client.predict(handle_file(str(pictures / "big.png")), api_name="/tokenize")

    *_, score = client.predict(rgb, api_name="/tokenize")
    assert score.endswith(" dB")


@pytest.mark.slow
def test_a_taken_port_is_one_clear_error(server, checkpoints, capsys):
    port = server.rstrip("/").rsplit(":", 1)[1]
    tokenizer, prior = map(str, checkpoints)
    args = ["serve", "--port", port, "--tokenizer", tokenizer, "--prior", prior, "--dataset", "x"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "another --port" in err and "\n" not in err
