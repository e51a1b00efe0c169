"""`somtok quickstart`: trains quick models where none are shipped, reuses them the next time."""

import pytest

from somtok import paths
from somtok.cli import main
from somtok.prior.model import load_prior
from somtok.tokenizer.model import load_tokenizer


@pytest.mark.slow
def test_quickstart_trains_where_nothing_is_shipped_then_reuses(tmp_path, monkeypatch, capsys):
    # A clone without shipped checkpoints: point the defaults at empty folders.
    monkeypatch.setattr(paths, "DEFAULT_TOKENIZER", tmp_path / "shipped" / "tokenizer")
    monkeypatch.setattr(paths, "DEFAULT_PRIOR", tmp_path / "shipped" / "prior")
    runs = tmp_path / "quick"
    args = ["quickstart", "--no-serve", "--run-dir", str(runs)]
    args += ["--tokenizer-steps", "3", "--prior-steps", "3"]

    assert main(args) == 0
    tokenizer = load_tokenizer(runs / "tokenizer")
    prior = load_prior(runs / "prior")
    assert prior.config.tokenizer_id == tokenizer.tokenizer_id
    assert tokenizer.quantizer.step == 3
    assert f"prior: {runs / 'prior'}" in capsys.readouterr().out

    # The second call finds the finished quick models and trains nothing.
    weights = runs / "tokenizer" / "model.safetensors", runs / "prior" / "model.safetensors"
    before = [w.stat().st_mtime_ns for w in weights]
    assert main(args) == 0
    assert [w.stat().st_mtime_ns for w in weights] == before
