"""Every command and app function meets the bad-input corpus (``make_bad_inputs.py``).

What each case must do is written in the corpus: a documented conversion, or one SomtokError
naming the file. Commands run in-process through ``somtok.cli.main`` and must then exit 2 with
one line ``somtok: error: ...`` on stderr, no traceback, and no output file, not even a partial
one; a few real subprocess runs check the same from outside. Then the safe defaults: loopback
only, size limits, safetensors only, nothing written outside the folder a user chose.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from make_bad_inputs import (
    CHECKPOINTS,
    CONVERT,
    ERROR,
    FOREIGN_ID,
    HOSTILE_NAMES,
    IMAGES,
    SIZE,
    TOKENS,
    make_corpus,
)
from PIL import Image

from somtok.cli import build_parser, main
from somtok.errors import SomtokError
from somtok.fileio import safe_child
from somtok.tokenizer.images import load_user_images
from somtok.tokenizer.tokens import load_tokens

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TOKENIZER_CASES = [n for n in CHECKPOINTS if not n.startswith("prior")]  # tok-* and missing
PRIOR_CASES = [n for n in CHECKPOINTS if not n.startswith("tok")]  # prior-* and missing


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def tokenizer(corpus):
    from somtok.tokenizer.model import load_tokenizer

    return load_tokenizer(str(corpus.tokenizer))


@pytest.fixture(scope="module")
def app(corpus):
    from somtok.serve.app import SomtokApp, load_models

    return SomtokApp(*load_models(str(corpus.tokenizer), str(corpus.prior)), dataset=None)


@pytest.fixture(autouse=True)
def no_pickle_loaded(corpus):
    """No test may unpickle the corpus's pytorch_model.bin files."""
    yield
    assert not corpus.tripwire.exists(), "a pickle checkpoint was loaded"


@pytest.fixture
def no_serving(monkeypatch):
    """Make `somtok serve` fail loudly instead of blocking, should a bad input ever get past it."""
    import somtok.serve.app

    def refuse(*args, **kwargs):
        raise AssertionError("serve got as far as launching the app")

    monkeypatch.setattr(somtok.serve.app, "launch", refuse)


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(capsys, *argv) -> Result:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def assert_user_error(result: Result, *needles: str) -> str:
    """Exit 2, one ``somtok: error:`` line (the last), no traceback; the line holds ``needles``."""
    assert result.code == 2, result
    assert "Traceback" not in result.err
    errors = [line for line in result.err.splitlines() if line.startswith("somtok: error:")]
    assert len(errors) == 1 and result.err.rstrip().endswith(errors[0]), result.err
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (hidden and partial ones too), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def assert_one_line_error(err: Exception, *needles: str) -> None:
    assert isinstance(err, SomtokError) and "\n" not in str(err)
    for needle in needles:
        assert needle in str(err), f"{needle!r} not in {str(err)!r}"


def image_outcome(name: str, resize: bool) -> str:
    return IMAGES[name].resized if resize else IMAGES[name].outcome


# ---- images ----


@pytest.mark.parametrize("resize", [False, True], ids=["as-is", "resize"])
@pytest.mark.parametrize("name", IMAGES)
def test_images_read_as_documented(corpus, name, resize):
    case = corpus.images[name]
    if image_outcome(name, resize) == ERROR:
        with pytest.raises(SomtokError) as caught:
            load_user_images([str(case.path)], SIZE, resize=resize)
        assert_one_line_error(caught.value, str(case.path), case.match)
        return
    found = load_user_images([str(case.path)], SIZE, resize=resize)
    assert found.images.shape == (1, 3, SIZE, SIZE) and found.names == [str(case.path)]
    error = np.abs(found.images[0].astype(np.float32) - case.pixels).mean()
    assert error <= case.tolerance, f"{name} reads {error:.2f} away from its documented pixels"


@pytest.mark.parametrize("resize", [False, True], ids=["as-is", "resize"])
@pytest.mark.parametrize("name", IMAGES)
def test_tokenize_meets_each_image(corpus, tokenizer, name, resize, tmp_path, capsys):
    case, out = corpus.images[name], tmp_path / "tokens.safetensors"
    flags = ["--resize"] if resize else []
    result = cli(capsys, "tokenize", case.path, "-o", out, "--tokenizer", corpus.tokenizer, *flags)
    if image_outcome(name, resize) == ERROR:
        assert_user_error(result, case.match, case.path.name)
        assert files_under(tmp_path) == []
        return
    assert result.code == 0, result
    tokens = load_tokens(out, tokenizer)
    assert tokens.names == [str(case.path)]
    if case.tolerance == 0:  # lossless cases: exactly the tokens of the documented pixels
        expected = tokenizer.encode(torch.from_numpy(case.pixels[None]))
        assert torch.equal(tokens.indices, expected)


def test_tokenize_a_folder_skips_what_it_cannot_read(corpus, tmp_path, capsys):
    folder, out = corpus.images["good.png"].path.parent, tmp_path / "t.safetensors"
    common = ["tokenize", folder, "-o", out, "--tokenizer", corpus.tokenizer, "--resize"]

    assert_user_error(cli(capsys, *common), str(folder))
    assert files_under(tmp_path) == []

    result = cli(capsys, *common, "--skip-errors")
    assert result.code == 0, result
    files = [c for c in corpus.images.values() if c.path.is_file()]  # folder.png is a folder
    readable = sorted(str(c.path) for c in files if c.resized == CONVERT)
    assert load_tokens(out).names == readable
    skipped = [line for line in result.err.splitlines() if line.startswith("somtok: skipped")]
    assert len(skipped) == len(files) - len(readable)


@pytest.mark.parametrize("name", IMAGES)
def test_interpolate_meets_each_image(corpus, name, tmp_path, capsys):
    case, gif = corpus.images[name], tmp_path / "walk.gif"
    args = [case.path, corpus.good_image, "-o", gif, "--steps", 3]
    result = cli(capsys, "interpolate", *args, "--tokenizer", corpus.tokenizer)
    if case.outcome == ERROR:
        assert_user_error(result, case.match)
        assert files_under(tmp_path) == []
    else:
        assert result.code == 0, result
        assert files_under(tmp_path) == ["walk.gif", "walk.png"]


@pytest.mark.parametrize(
    ("flags", "needle"), [(["--steps", 100_000], "at most"), (["--scale", 1000], "--scale")]
)
def test_interpolate_refuses_outsized_requests(corpus, flags, needle, tmp_path, capsys):
    """A typo must not ask for 100,000 frames or gigabytes per frame (limits.py)."""
    image, gif = corpus.good_image, tmp_path / "w.gif"
    argv = ["interpolate", image, image, "-o", gif, "--tokenizer", corpus.tokenizer, *flags]
    assert_user_error(cli(capsys, *argv), needle)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("name", IMAGES)
def test_app_meets_each_image(corpus, app, name):
    """The app resizes any upload, so it meets the ``resized`` outcome, and names the file as
    the user called it (``orig_name``), not Gradio's cache path."""
    case = corpus.images[name]
    upload = {"path": str(case.path), "orig_name": f"upload of {name}"}
    calls = [
        lambda: app.tokenize(upload),
        lambda: app.shift(upload, 1, -1),
        lambda: app.interpolate(str(corpus.good_image), upload, steps=3),
    ]
    for call in calls:
        if case.resized == ERROR:
            with pytest.raises(SomtokError) as caught:
                call()
            needle = case.match if case.match != name else f"upload of {name}"
            assert_one_line_error(caught.value, needle)
        else:
            assert call() is not None


def test_app_meets_pictures_it_is_handed_directly(app):
    """Gradio may hand over arrays and PIL images too: odd modes convert, odd shapes are errors."""
    grey16 = Image.fromarray(np.full((40, 30), 65535, np.uint16))
    seen, *_ = app.tokenize(grey16)
    assert (seen == 255).all()  # 16-bit white stays white
    for bad, needle in [
        (np.zeros((8, 8, 2), np.uint8), "shape"),
        (np.zeros((8, 8, 3), np.float64), "dtype"),
        (Image.new("RGB", (1, 400)), "side ratio"),
        (12, "int"),
    ]:
        with pytest.raises(SomtokError) as caught:
            app.tokenize(bad)
        assert_one_line_error(caught.value, needle)


def test_training_data_sources_skip_unreadable_images(corpus, capsys):
    """evaluate (and training) read a folder as training data: conformed, unreadable ones
    skipped and counted (DESIGN.md), not an error."""
    folder = corpus.images["good.png"].path.parent
    result = cli(capsys, "evaluate", "--tokenizer", corpus.tokenizer, "--data", folder)
    assert result.code == 0, result
    assert '"skipped": ' in result.out and '"skipped": 0' not in result.out


def test_training_commands_refuse_data_they_cannot_read(corpus, tmp_path, capsys):
    """A folder of nothing readable, or no folder at all, stops training before any run folder
    is made."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("notes.png", "empty.png", "truncated.jpg"):
        (bad / name).write_bytes(corpus.images[name].path.read_bytes())
    run = tmp_path / "run"
    common = ["--steps", 1, "--run-dir", run]
    for data, needle in [(bad, "no readable image"), (tmp_path / "nowhere", "does not exist")]:
        for argv in (
            ["train-tokenizer", "--data", data, "--preset", "tiny", *common],
            ["train-prior", "--data", data, "--tokenizer", corpus.tokenizer, *common],
        ):
            assert_user_error(cli(capsys, *argv), str(data), needle)
            assert not run.exists()
    assert_user_error(cli(capsys, "train-tokenizer", "--resume", *common), "--resume")


def test_a_sweep_that_cannot_start_binds_nothing(corpus, tmp_path, capsys):
    """`somtok reproduce` with unreadable --data fails, and a retry with other data is judged on
    that data, not refused for differing from the failed start."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.png").write_bytes(corpus.images["notes.png"].path.read_bytes())
    sweep = ["reproduce", "--out", tmp_path / "sweep", "--steps", 1, "--preset", "tiny"]
    assert_user_error(cli(capsys, *sweep, "--data", bad), "no readable image")
    assert_user_error(cli(capsys, *sweep, "--data", tmp_path / "nowhere"), "does not exist")
    assert not (tmp_path / "sweep" / "sweep.json").exists()


# ---- token files ----


@pytest.mark.parametrize("name", TOKENS)
def test_load_tokens_meets_each_token_file(corpus, tokenizer, name):
    case = corpus.tokens[name]
    if case.outcome == ERROR:
        with pytest.raises(SomtokError) as caught:
            load_tokens(case.path, tokenizer)
        assert_one_line_error(caught.value, str(case.path), case.match)
    else:
        assert len(load_tokens(case.path, tokenizer)) >= 1


@pytest.mark.parametrize("name", TOKENS)
def test_detokenize_meets_each_token_file(corpus, name, tmp_path, capsys):
    case, out = corpus.tokens[name], tmp_path / "pngs"
    result = cli(capsys, "detokenize", case.path, "-o", out, "--tokenizer", corpus.tokenizer)
    if case.outcome == ERROR:
        assert_user_error(result, case.match)
        assert files_under(tmp_path) == []
        return
    assert result.code == 0, result
    tokens, written = load_tokens(case.path), files_under(out)
    assert len(written) == len(tokens) and files_under(tmp_path) == [f"pngs/{f}" for f in written]
    h, w = tokens.latent_shape
    with Image.open(out / written[0]) as png:
        assert png.size == (w * 4, h * 4)  # the tiny preset downsamples by 4


def test_hostile_names_write_only_inside_the_chosen_folder(corpus, tmp_path, capsys):
    """Names like '../../evil.png' or '/tmp/x.png' become plain file names inside --output."""
    out = tmp_path / "a" / "b" / "pngs"
    case = corpus.tokens["tokens-hostile-names.safetensors"]
    result = cli(capsys, "detokenize", case.path, "-o", out, "--tokenizer", corpus.tokenizer)
    assert result.code == 0, result
    written = files_under(tmp_path)
    assert len(written) == len(HOSTILE_NAMES)
    assert all(name.startswith("a/b/pngs/") and name.endswith(".png") for name in written)
    assert len({name.casefold() for name in written}) == len(written)
    assert not Path("/tmp/somtok-absolute-evil.png").exists()
    for name in written:
        with Image.open(tmp_path / name) as png:
            assert png.size == (SIZE, SIZE)


@pytest.mark.parametrize("name", ["../x.png", "/etc/passwd", "..", "", "a/../../b", "x\x00y"])
def test_safe_child_never_leaves_the_folder(tmp_path, name):
    try:
        child = safe_child(tmp_path, name)
    except SomtokError:
        return
    assert child.parent == tmp_path.resolve()


# ---- checkpoint folders ----


def tokenizer_commands(corpus, tmp_path: Path) -> dict[str, list]:
    """Each command that takes --tokenizer, with good arguments otherwise; outputs in tmp_path."""
    image, tokens = corpus.good_image, corpus.good_tokens
    return {
        "tokenize": ["tokenize", image, "-o", tmp_path / "t.safetensors"],
        "detokenize": ["detokenize", tokens, "-o", tmp_path / "pngs"],
        "evaluate": ["evaluate", "--json", tmp_path / "m.json"],
        "interpolate": ["interpolate", image, image, "-o", tmp_path / "w.gif"],
        "sample": ["sample", "--prior", corpus.prior, "-o", tmp_path / "s.safetensors"],
        "serve": ["serve", "--prior", corpus.prior, "--port", 7860],
        "train-prior": ["train-prior", "--run-dir", tmp_path / "run", "--steps", 1],
    }


@pytest.mark.parametrize("name", TOKENIZER_CASES)
@pytest.mark.parametrize(
    "command",
    ["tokenize", "detokenize", "evaluate", "interpolate", "sample", "serve", "train-prior"],
)
def test_commands_refuse_a_bad_tokenizer(corpus, command, name, tmp_path, capsys, no_serving):
    case = corpus.checkpoints[name]
    argv = tokenizer_commands(corpus, tmp_path)[command]
    result = cli(capsys, *argv, "--tokenizer", case.path)
    assert_user_error(result, case.match)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("name", PRIOR_CASES)
@pytest.mark.parametrize("command", ["sample", "serve"])
def test_commands_refuse_a_bad_prior(corpus, command, name, tmp_path, capsys, no_serving):
    case = corpus.checkpoints[name]
    argv = {
        "sample": ["sample", "-o", tmp_path / "s.safetensors"],
        "serve": ["serve", "--port", 7860],
    }[command]
    result = cli(capsys, *argv, "--tokenizer", corpus.tokenizer, "--prior", case.path)
    assert_user_error(result, case.match)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_app_refuses_bad_checkpoints(corpus, name):
    from somtok.serve.app import load_models

    case = corpus.checkpoints[name]
    pairs = []
    if not name.startswith("prior"):
        pairs.append((str(case.path), None))
    if not name.startswith("tok"):
        pairs.append((str(corpus.tokenizer), str(case.path)))
    for tokenizer, prior in pairs:
        with pytest.raises(SomtokError) as caught:
            load_models(tokenizer, prior)
        assert_one_line_error(caught.value, case.match)


# ---- safe defaults ----


def test_serve_binds_loopback_unless_told_otherwise():
    from somtok.serve.app import launch

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"
    assert inspect.signature(launch).parameters["host"].default == "127.0.0.1"


def test_pillow_guards_with_our_pixel_limit():
    """Code that decodes with Pillow before us (Gradio) meets our limit too; the upload limit of
    the running server is checked in test_server_load.py."""
    from somtok import limits

    assert Image.MAX_IMAGE_PIXELS == limits.MAX_IMAGE_PIXELS
    assert IMAGES["bomb.png"].outcome == IMAGES["over-limit.png"].outcome == ERROR


def test_pickle_weights_are_refused_even_beside_a_config(corpus):
    """A folder holding only pytorch_model.bin is refused by name, and the pickle never runs
    (the autouse fixture checks its tripwire)."""
    from somtok.prior.model import load_prior
    from somtok.tokenizer.model import load_tokenizer

    for loader, name in [(load_tokenizer, "tok-pickle-only"), (load_prior, "prior-pickle-only")]:
        folder = corpus.checkpoints[name].path
        assert (folder / "pytorch_model.bin").is_file()
        with pytest.raises(SomtokError, match="model.safetensors"):
            loader(str(folder))


def test_outputs_land_only_where_asked(corpus, tmp_path, capsys, monkeypatch):
    """Run from an empty working folder, each writing command leaves files only at its -o (a
    folder with spaces and non-ASCII in its name)."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "my out – été 猫"
    tok = ["--tokenizer", corpus.tokenizer]
    runs = [
        ["tokenize", corpus.good_image, "-o", out / "t.safetensors", *tok],
        ["detokenize", corpus.good_tokens, "-o", out / "pngs", *tok],
        ["sample", "--prior", corpus.prior, "-n", 2, "-o", out / "s.safetensors", *tok],
        ["interpolate", corpus.good_image, corpus.good_image, "-o", out / "w.gif", *tok],
    ]
    for argv in runs:
        assert cli(capsys, *argv).code == 0
    assert files_under(work) == []
    assert files_under(out) == [
        "pngs/a.png", "pngs/b.png", "s.png", "s.safetensors", "t.safetensors", "w.gif", "w.png",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "command",
    ["tokenize", "detokenize", "sample", "interpolate", "evaluate", "train-tokenizer",
     "train-prior", "reproduce"],
)  # fmt: skip
def test_outputs_that_cannot_be_made_are_one_line_errors(corpus, command, capsys):
    """An output below a file (a mistyped path) is refused by name before any work."""
    below = corpus.good_image / "out"
    tok = ["--tokenizer", corpus.tokenizer]
    argv = {
        "tokenize": ["tokenize", corpus.good_image, "-o", below / "t.safetensors", *tok],
        "detokenize": ["detokenize", corpus.good_tokens, "-o", below, *tok],
        "sample": ["sample", "--prior", corpus.prior, "-o", below / "s.safetensors", *tok],
        "interpolate": ["interpolate", corpus.good_image, corpus.good_image, "-o",
                        below / "w.gif", *tok],
        "evaluate": ["evaluate", "--json", below / "m.json", *tok],
        "train-tokenizer": ["train-tokenizer", "--run-dir", below, "--steps", 1],
        "train-prior": ["train-prior", "--run-dir", below, "--steps", 1, *tok],
        "reproduce": ["reproduce", "--out", below, "--steps", 1, "--preset", "tiny"],
    }[command]  # fmt: skip
    assert_user_error(cli(capsys, *argv), str(corpus.good_image), "is a file, not a folder")


# ---- from outside: real processes ----


@pytest.mark.slow
def test_real_processes_exit_2_with_one_line(corpus, tmp_path):
    runs = [
        (["tokenize", corpus.images["notes.png"].path, "-o", tmp_path / "t.safetensors",
          "--tokenizer", corpus.tokenizer], "notes.png"),
        (["detokenize", corpus.tokens["tokens-other-tokenizer.safetensors"].path, "-o",
          tmp_path / "pngs", "--tokenizer", corpus.tokenizer], FOREIGN_ID),
        (["sample", "--prior", corpus.checkpoints["prior-pickle-only"].path, "--tokenizer",
          corpus.tokenizer, "-o", tmp_path / "s.safetensors"], "model.safetensors"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for argv, needle in runs:
        done = subprocess.run(
            [sys.executable, "-m", "somtok", *map(str, argv)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert_user_error(Result(done.returncode, done.stdout, done.stderr), needle)
    assert files_under(tmp_path) == []
