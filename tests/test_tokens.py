"""Token files: the round trip, and every way a file can be wrong."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from somtok.errors import SomtokError
from somtok.tokenizer.model import SomTokenizer, TokenizerConfig
from somtok.tokenizer.tokens import FORMAT, TokenFile, load_tokens, save_tokens


def tiny(seed: int = 0) -> SomTokenizer:
    torch.manual_seed(seed)
    return SomTokenizer(TokenizerConfig.from_preset("tiny")).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return tiny()


@pytest.fixture
def grids():
    torch.manual_seed(2)
    return torch.randint(0, 64, (5, 8, 8))


def _meta(tokenizer, **changes) -> dict[str, str]:
    meta = {
        "format": FORMAT,
        "tokenizer_id": tokenizer.tokenizer_id,
        "codebook_size": "64",
        "map_shape": "[8, 8]",
        "latent_shape": "[8, 8]",
        "names": json.dumps([f"n{i}" for i in range(5)]),
    }
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def _forge(path, tensors, meta):
    save_file(tensors, str(path), metadata=meta)
    return path


def test_round_trip_with_labels_and_names(tmp_path, tokenizer, grids):
    labels = torch.arange(5)
    names = ["a.png", "dir/b.png", "ünï.png", "", "a.png"]
    tokens = TokenFile.for_tokenizer(tokenizer, grids, labels=labels, names=names)
    path = save_tokens(tmp_path / "t.safetensors", tokens)
    loaded = load_tokens(path, tokenizer)
    assert torch.equal(loaded.indices, grids) and loaded.indices.dtype == torch.int64
    assert torch.equal(loaded.labels, labels)
    assert loaded.names == names and len(loaded) == 5
    assert loaded.latent_shape == (8, 8) and loaded.map_shape == (8, 8)
    assert loaded.tokenizer_id == tokenizer.tokenizer_id and loaded.codebook_size == 64
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("indices").dtype == torch.int32  # the contract's on-disk dtype
        meta = f.metadata()
    assert meta["format"] == "somtok-tokens/1" and json.loads(meta["latent_shape"]) == [8, 8]


def test_int32_grids_and_no_names_are_fine(tmp_path, tokenizer, grids):
    path = save_tokens(tmp_path / "t.safetensors", TokenFile.for_tokenizer(tokenizer, grids.int()))
    loaded = load_tokens(path)
    assert loaded.names == [""] * 5 and loaded.labels is None


def test_no_overwrite_without_force_and_no_partial_files(tmp_path, tokenizer, grids):
    path = tmp_path / "t.safetensors"
    tokens = TokenFile.for_tokenizer(tokenizer, grids)
    save_tokens(path, tokens)
    with pytest.raises(SomtokError, match="already exists.*--force"):
        save_tokens(path, tokens)
    save_tokens(path, TokenFile.for_tokenizer(tokenizer, grids[:2]), force=True)
    assert len(load_tokens(path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_grids_of_another_tokenizer_are_refused(tmp_path, tokenizer, grids):
    path = save_tokens(tmp_path / "t.safetensors", TokenFile.for_tokenizer(tokenizer, grids))
    other = tiny(seed=1)
    with pytest.raises(SomtokError, match=f"{tokenizer.tokenizer_id}.*{other.tokenizer_id}"):
        load_tokens(path, other)


def test_an_edited_map_shape_is_refused_against_its_tokenizer(tmp_path, tokenizer, grids):
    h, w = tokenizer.quantizer.grid.shape
    meta = _meta(tokenizer, map_shape=json.dumps([w * h]))  # same K, another map
    path = _forge(tmp_path / "t.safetensors", {"indices": grids.int()}, meta)
    assert load_tokens(path).map_shape == (w * h,)  # a well-formed file on its own
    with pytest.raises(SomtokError, match=f"map_shape \\[{w * h}\\]; its tokenizer's map is"):
        load_tokens(path, tokenizer)


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        (torch.full((2, 8, 8), 64), "\\[64, 64\\].*index < 64"),
        (torch.full((2, 8, 8), -3), "\\[-3, -3\\]"),
        (torch.zeros(2, 64, dtype=torch.int64), "shape \\(2, 64\\)"),
        (torch.zeros(0, 8, 8, dtype=torch.int64), "shape \\(0, 8, 8\\)"),
        (torch.zeros(2, 8, 8), "torch.float32"),
        (torch.zeros(2, 8, 8, dtype=torch.int16), "torch.int16"),
    ],
)
def test_bad_indices_are_refused_when_made_and_when_read(tmp_path, tokenizer, indices, message):
    with pytest.raises(SomtokError, match=message):
        TokenFile.for_tokenizer(tokenizer, indices)
    path = _forge(tmp_path / "bad.safetensors", {"indices": indices}, _meta(tokenizer, names=None))
    with pytest.raises(SomtokError, match=f"bad.safetensors.*{message}"):
        load_tokens(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "somtok-tokens/9"}, "format is 'somtok-tokens/9'"),
        ({"format": None}, "format is None"),
        ({"tokenizer_id": None}, "lacks \\['tokenizer_id'\\]"),
        ({"latent_shape": "[4, 16]"}, "latent_shape \\[4, 16\\] but the grids are \\[8, 8\\]"),
        ({"latent_shape": "[8,"}, "'latent_shape' is not valid JSON"),
        ({"codebook_size": '"64"'}, "'codebook_size' is '64'; expected JSON of type int"),
        ({"codebook_size": "32", "map_shape": "[4, 8]"}, "index < 32"),
        ({"map_shape": "[4, 4]"}, "map_shape=\\[4, 4\\] does not fit codebook_size=64"),
        ({"names": '["only one"]'}, "1 names given for 5 token grids"),
        ({"tokenizer_id": "../../etc"}, "tokenizer_id='../../etc'"),
    ],
)
def test_bad_metadata_is_refused(tmp_path, tokenizer, grids, changes, message):
    path = _forge(tmp_path / "t.safetensors", {"indices": grids.int()}, _meta(tokenizer, **changes))
    with pytest.raises(SomtokError, match=message):
        load_tokens(path)


def test_wrong_tensors_are_refused(tmp_path, tokenizer, grids):
    meta = _meta(tokenizer)
    path = _forge(tmp_path / "t.safetensors", {"codes": grids}, meta)
    with pytest.raises(
        SomtokError, match="incomplete: no 'indices' tensor \\(tensors: \\['codes'\\]"
    ):
        load_tokens(path)
    path = _forge(path, {"indices": grids, "extra": torch.zeros(1)}, meta)
    with pytest.raises(SomtokError, match="incomplete"):
        load_tokens(path)
    path = _forge(path, {"indices": grids, "labels": torch.zeros(4, dtype=torch.int64)}, meta)
    with pytest.raises(SomtokError, match="labels of shape \\(4,\\)"):
        load_tokens(path)


def test_files_that_are_not_token_files(tmp_path, tokenizer):
    with pytest.raises(SomtokError, match="does not exist"):
        load_tokens(tmp_path / "absent.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(SomtokError, match="junk.safetensors.*not a readable safetensors"):
        load_tokens(junk)
    weights = tmp_path / "model.safetensors"
    save_file({"indices": torch.zeros(1, 8, 8, dtype=torch.int32)}, str(weights))
    with pytest.raises(SomtokError, match="format is None; expected a token file"):
        load_tokens(weights)
