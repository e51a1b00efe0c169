"""`somtok tokenize`, `detokenize` and `evaluate` on real CIFAR-10 images, in process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from somtok import paths
from somtok.cli import main
from somtok.commands.detokenize import png_paths, safe_stem
from somtok.tokenizer.data import load_images
from somtok.tokenizer.model import SomTokenizer, TokenizerConfig
from somtok.tokenizer.plots import to_uint8
from somtok.tokenizer.tokens import TokenFile, load_tokens, save_tokens

COUNT = 6  # real images in the folder


def _tokenizer(folder, seed: int) -> str:
    torch.manual_seed(seed)
    SomTokenizer(TokenizerConfig.from_preset("tiny")).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return _tokenizer(tmp_path_factory.mktemp("tok"), seed=0)


@pytest.fixture(scope="module")
def pixels():
    """uint8 (COUNT, 3, 32, 32): real CIFAR-10 test images from the bundled sample."""
    return np.array(load_images("sample", "test", 32, limit=COUNT).images)


@pytest.fixture
def folder(tmp_path, pixels):
    """COUNT good PNGs, one corrupt PNG and a text file (not an image: ignored)."""
    root = tmp_path / "images"
    root.mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image.transpose(1, 2, 0)).save(root / f"img{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    (root / "notes.txt").write_text("not an image")
    return root


def test_round_trip_on_a_folder_with_a_corrupt_file(tmp_path, tok, folder, pixels, capsys):
    out = tmp_path / "tokens.safetensors"
    assert main(["tokenize", str(folder), "-o", str(out), "--tokenizer", tok]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert not out.exists()

    args = ["tokenize", str(folder), "-o", str(out), "--tokenizer", tok, "--skip-errors"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "skipped" in printed.err and "broken.png" in printed.err
    assert "6 token grids of 8 x 8" in printed.out

    tokenizer = SomTokenizer.from_pretrained(tok)
    tokens = load_tokens(out, tokenizer)
    assert [os.path.basename(n) for n in tokens.names] == [f"img{i}.png" for i in range(COUNT)]
    expected = tokenizer.encode(pixels)
    assert torch.equal(tokens.indices, expected)

    images = tmp_path / "decoded"
    assert main(["detokenize", str(out), "-o", str(images), "--tokenizer", tok]) == 0
    assert sorted(p.name for p in images.iterdir()) == [f"img{i}.png" for i in range(COUNT)]
    want = to_uint8(tokenizer.decode_indices(expected))  # (B, H, W, 3)
    for i in range(COUNT):
        got = np.asarray(Image.open(images / f"img{i}.png"))
        assert np.array_equal(got, want[i])


def test_bf16_tokens_are_those_of_the_bf16_encoder(tmp_path, tok, folder, pixels, capsys):
    out = tmp_path / "tokens.safetensors"
    args = ["tokenize", str(folder / "img*.png"), "-o", str(out), "--tokenizer", tok]
    assert main([*args, "--precision", "bf16"]) == 0
    tokenizer = SomTokenizer.from_pretrained(tok)
    tokens = load_tokens(out, tokenizer).indices
    exact = tokenizer.encode(pixels)
    tokenizer.optimize_for_inference(precision="bf16", compile=False)
    assert torch.equal(tokens, tokenizer.encode(pixels))
    assert float((tokens == exact).float().mean()) > 0.9
    with pytest.raises(SystemExit) as stop:
        main([*args, "--force", "--precision", "fp16"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("somtok: error: argument --precision: invalid choice")
    assert err.count("\n") == 1 and "see 'somtok tokenize --help'" in err


def test_files_and_globs_in_the_order_given(tmp_path, tok, folder):
    out = tmp_path / "t.safetensors"
    inputs = [str(folder / "img3.png"), str(folder / "img[01].png")]
    assert main(["tokenize", *inputs, "-o", str(out), "--tokenizer", tok]) == 0
    names = [os.path.basename(n) for n in load_tokens(out).names]
    assert names == ["img3.png", "img0.png", "img1.png"]


def test_a_wrong_size_is_an_error_unless_resize(tmp_path, tok, pixels, capsys):
    big = tmp_path / "big.png"
    Image.fromarray(pixels[0].transpose(1, 2, 0)).resize((48, 40)).save(big)
    out = tmp_path / "t.safetensors"
    assert main(["tokenize", str(big), "-o", str(out), "--tokenizer", tok]) == 2
    err = capsys.readouterr().err
    assert "big.png" in err and "48 x 40" in err and "--resize" in err
    assert "expected 32 x 32, the size this tokenizer reads" in err
    assert main(["tokenize", str(big), "-o", str(out), "--tokenizer", tok, "--resize"]) == 0
    assert load_tokens(out).indices.shape == (1, 8, 8)


def test_outputs_are_kept_without_force(tmp_path, tok, folder, capsys):
    out = tmp_path / "t.safetensors"
    base = ["tokenize", str(folder / "img0.png"), "-o", str(out), "--tokenizer", tok]
    assert main(base) == 0
    assert main(base) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*base, "--force"]) == 0
    assert "1 token grid of 8 x 8" in capsys.readouterr().out

    # A folder in the way, or a name that is not a token file's, is refused whatever --force.
    for bad, why in [(tmp_path, "is a folder"), (tmp_path / "t.png", "ending in .safetensors")]:
        argv = ["tokenize", str(folder / "img0.png"), "-o", str(bad), "--tokenizer", tok]
        assert main([*argv, "--force"]) == 2
        assert why in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists()

    images = tmp_path / "decoded"
    detok = ["detokenize", str(out), "-o", str(images), "--tokenizer", tok]
    assert main(detok) == 0
    before = (images / "img0.png").stat().st_mtime_ns
    assert main(detok) == 2
    assert "already exist" in capsys.readouterr().err
    assert (images / "img0.png").stat().st_mtime_ns == before
    assert main([*detok, "--force"]) == 0
    assert sorted(p.name for p in images.iterdir()) == ["img0.png"]  # no temporary files left


def test_detokenize_refuses_tokens_of_another_tokenizer(tmp_path, tok, folder, capsys):
    out = tmp_path / "t.safetensors"
    assert main(["tokenize", str(folder / "img1.png"), "-o", str(out), "--tokenizer", tok]) == 0
    other = _tokenizer(tmp_path / "other", seed=1)
    assert main(["detokenize", str(out), "-o", str(tmp_path / "x"), "--tokenizer", other]) == 2
    assert "was made by tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_detokenize_makes_names_safe_and_distinct(tmp_path, tok):
    tokenizer = SomTokenizer.from_pretrained(tok)
    names = ["../../evil.png", "a/b/same.png", "c\\SAME.jpg", "", "..", "x\x00y.png", ".hidden"]
    grids = torch.zeros(len(names), 8, 8, dtype=torch.long)
    path = save_tokens(
        tmp_path / "t.safetensors", TokenFile.for_tokenizer(tokenizer, grids, names=names)
    )
    out = tmp_path / "out"
    assert main(["detokenize", str(path), "-o", str(out), "--tokenizer", tok]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(
        ["evil.png", "same.png", "SAME-1.png", "000003.png", "000004.png", "x_y.png", "hidden.png"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "t.safetensors"]


def test_png_paths_number_missing_and_taken_names(tmp_path):
    found = png_paths(["000001.png", "", "a", "a"], tmp_path)
    assert [p.name for p in found] == ["000001.png", "000001-1.png", "a.png", "a-1.png"]
    assert all(p.parent == tmp_path.resolve() for p in found)
    assert safe_stem("dir/Ü ber.tar.gz") == "Ü ber.tar"


def test_evaluate_prints_a_table_and_writes_json(tmp_path, tok, capsys):
    report = tmp_path / "metrics.json"
    args = ["evaluate", "--tokenizer", tok, "--limit", "20", "--json", str(report)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "PSNR (dB)" in out and "codes used" in out
    data = json.loads(report.read_text())
    for key in ("mse", "psnr", "perplexity", "codes_used", "topographic_error"):
        assert key in data and np.isfinite(data[key]), key
    assert data["images"] == 20 and data["split"] == "test"

    tokenizer = SomTokenizer.from_pretrained(tok)
    pixels = torch.from_numpy(np.array(load_images("sample", "test", 32, limit=20).images))
    recon = tokenizer.decode_indices(tokenizer.encode(pixels)).double()
    mse = float((recon - pixels.double() / 255).pow(2).mean())
    assert abs(data["mse"] - mse) < 1e-9
    assert abs(data["psnr"] - 10 * np.log10(1 / mse)) < 1e-6

    assert main(args) == 2  # the JSON file exists now
    assert "--force" in capsys.readouterr().err


def test_without_a_shipped_tokenizer_the_error_says_what_to_do(
    tmp_path, monkeypatch, folder, capsys
):
    monkeypatch.setattr(paths, "DEFAULT_TOKENIZER", tmp_path / "absent")
    assert main(["tokenize", str(folder), "-o", str(tmp_path / "t.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "somtok train-tokenizer" in err and "--tokenizer" in err


@pytest.mark.slow
def test_the_installed_command_exits_2_on_a_corrupt_file(tmp_path, tok, folder):
    command = [sys.executable, "-m", "somtok", "tokenize", str(folder), "-o", "t.safetensors"]
    result = subprocess.run(
        [*command, "--tokenizer", tok], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert result.stderr.startswith("somtok: error:") and "broken.png" in result.stderr
    assert not (tmp_path / "t.safetensors").exists()
