"""The prior end to end: encoding a dataset once, `somtok train-prior` (and --resume),
`somtok sample`, and the tokenizer-id refusals. A random tiny tokenizer and a tiny prior on a
few dozen images of the bundled sample, on the CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from somtok import paths, training
from somtok.cli import main as cli_main
from somtok.commands import train_prior as command
from somtok.errors import SomtokError
from somtok.prior.model import PRESETS, load_prior
from somtok.prior.train import PriorTrainConfig, encode_dataset, lr_at
from somtok.tokenizer.model import SomTokenizer, TokenizerConfig, load_tokenizer
from somtok.tokenizer.tokens import TokenFile, load_tokens, save_tokens

TRAIN = [
    "--data", "sample", "--limit", "48", "--eval-limit", "24", "--preset", "tiny",
    "--batch-size", "8", "--save-every", "2", "--eval-every", "2", "--log-every", "1",
]  # fmt: skip


def make_tokenizer(folder, seed: int):
    torch.manual_seed(seed)
    SomTokenizer(TokenizerConfig.from_preset("tiny")).save_pretrained(folder)
    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {seed: (root / f"t{seed}", make_tokenizer(root / f"t{seed}", seed)) for seed in (0, 1)}


@pytest.fixture(scope="module")
def trained(tokenizers, tmp_path_factory):
    """A run folder trained for 4 steps, then resumed to 6."""
    run = tmp_path_factory.mktemp("prior") / "run"
    folder = str(tokenizers[0][0])
    base = ["train-prior", "--tokenizer", folder, "--run-dir", str(run), *TRAIN]
    assert cli_main([*base, "--steps", "4"]) == 0
    assert cli_main(["train-prior", "--tokenizer", folder, "--run-dir", str(run), "--resume",
                     "--steps", "6"]) == 0  # fmt: skip
    return run


def test_train_prior_writes_a_run_folder_and_resumes(trained, tokenizers):
    tokenizer = tokenizers[0][1]
    assert [step for step, _ in training.list_checkpoints(trained / "state")] == [2, 4, 6]
    val = training.read_metrics(trained / "metrics.jsonl", "val")
    assert [row["step"] for row in val] == [2, 4, 6]
    assert all(0 < row["bits_per_token"] < math.log2(tokenizer.codebook_size) + 1 for row in val)
    assert "bits_per_token_uncond" in val[0]

    prior = load_prior(trained)
    assert prior.tokenizer_id == tokenizer.tokenizer_id
    assert prior.config.latent_shape == tokenizer.config.latent_shape
    assert prior.config.codebook_size == tokenizer.codebook_size
    assert prior.config.class_names[3] == "cat"
    config = json.loads((trained / "config.json").read_text())
    assert config["tokenizer_id"] == tokenizer.tokenizer_id
    assert "bits_per_token" in (trained / "README.md").read_text()
    assert (trained / "plots" / "samples.png").stat().st_size > 0


def test_resume_with_another_tokenizer_is_refused(trained, tokenizers, capsys):
    args = ["train-prior", "--tokenizer", str(tokenizers[1][0]), "--run-dir", str(trained)]
    assert cli_main([*args, "--resume", "--steps", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and tokenizers[1][1].tokenizer_id in err


def test_sample_writes_token_grids_and_a_png(trained, tokenizers, tmp_path, capsys):
    folder, tokenizer = tokenizers[0]
    out = tmp_path / "s.safetensors"
    args = ["sample", "--prior", str(trained), "--tokenizer", str(folder), "-o", str(out)]
    assert cli_main([*args, "--class", "cat", "--count", "5", "--guidance", "2"]) == 0
    tokens = load_tokens(out, tokenizer)
    assert tokens.indices.shape == (5, *tokenizer.config.latent_shape)
    assert tokens.labels.tolist() == [3] * 5
    assert (tmp_path / "s.png").stat().st_size > 0

    assert cli_main([*args, "--count", "2"]) == 2  # exists
    assert "--force" in capsys.readouterr().err
    assert cli_main([*args, "--count", "2", "--force"]) == 0
    assert load_tokens(out).labels is None  # unconditional

    other = ["sample", "--prior", str(trained), "--tokenizer", str(tokenizers[1][0])]
    assert cli_main([*other, "-o", str(tmp_path / "t.safetensors")]) == 2
    assert tokenizer.tokenizer_id in capsys.readouterr().err
    assert not (tmp_path / "t.safetensors").exists()
    assert cli_main([*args, "--force", "--top-k", "0"]) == 2
    assert "top_k" in capsys.readouterr().err


def test_sampling_options_are_checked_before_the_tokenizer_loads(trained, tmp_path, capsys):
    missing = tmp_path / "no-tokenizer"
    args = ["sample", "--prior", str(trained), "--tokenizer", str(missing), "--top-k", "0"]
    assert cli_main([*args, "-o", str(tmp_path / "s.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "top_k=0 is invalid" in err and "no-tokenizer" not in err


def test_sample_with_the_shipped_tokenizer_names_its_folder(trained, tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    assert cli_main(["sample", "--prior", str(trained), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{paths.DEFAULT_TOKENIZER} (the shipped one)" in err and "trained on" in err
    assert not out.exists()


def test_encoded_dataset_is_reused_while_the_tokenizer_matches(tokenizers, tmp_path):
    (_, first), (_, second) = tokenizers[0], tokenizers[1]
    a = encode_dataset(first, "sample", "test", limit=16, cache_dir=tmp_path, progress=False)
    assert a.indices.shape == (16, *first.config.latent_shape)
    assert a.labels.shape == (16,) and a.class_names[0] == "airplane"
    assert load_tokens(a.path).tokenizer_id == first.tokenizer_id
    stamp = a.path.stat().st_mtime_ns

    again = encode_dataset(first, "sample", "test", limit=16, cache_dir=tmp_path, progress=False)
    assert again.path == a.path and a.path.stat().st_mtime_ns == stamp
    assert torch.equal(again.indices, a.indices) and torch.equal(again.labels, a.labels)

    b = encode_dataset(second, "sample", "test", limit=16, cache_dir=tmp_path, progress=False)
    assert b.path != a.path and second.tokenizer_id in b.path.name

    # A file under the first tokenizer's name but holding another id is encoded afresh.
    forged = TokenFile.for_tokenizer(second, b.indices, b.labels)
    save_tokens(a.path, forged, force=True)
    fresh = encode_dataset(first, "sample", "test", limit=16, cache_dir=tmp_path, progress=False)
    assert load_tokens(fresh.path).tokenizer_id == first.tokenizer_id
    assert torch.equal(fresh.indices, a.indices)


def test_train_settings_are_checked(tmp_path):
    from somtok.prior.train import check_train_config

    for bad, message in [
        (dict(preset="huge"), "preset"),
        (dict(steps=0), "steps"),
        (dict(lr=0.0), "lr"),
        (dict(class_dropout=1.0), "class-dropout"),
    ]:
        with pytest.raises(SomtokError, match=message):
            check_train_config(PriorTrainConfig(**bad))


def test_learning_rate_warms_up_then_decays():
    config = PriorTrainConfig(lr=1e-3, warmup=10, steps=110)
    assert lr_at(0, config) == pytest.approx(1e-4)
    assert lr_at(9, config) == pytest.approx(1e-3)
    assert lr_at(60, config) == pytest.approx(0.55e-3)
    assert lr_at(110, config) == pytest.approx(1e-4)


def test_command_presets_match_the_registry():
    assert set(command.PRESET_NAMES) == set(PRESETS)
