"""The tokenizer model: shapes and ranges of the three verbs, their agreement, Hub checkpoints."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from somtok import paths
from somtok.errors import SomtokError
from somtok.tokenizer.model import (
    PRESETS,
    SomTokenizer,
    TokenizerConfig,
    load_tokenizer,
    tokenizer_id,
)


def tiny(seed: int = 0, **overrides) -> SomTokenizer:
    torch.manual_seed(seed)
    return SomTokenizer(TokenizerConfig.from_preset("tiny", **overrides)).eval()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """Equal up to float rounding (torch.testing imports far more than this needs)."""
    return a.shape == b.shape and float((a.detach() - b.detach()).abs().max()) <= tol


def trained_a_little(model: SomTokenizer, steps: int = 3) -> SomTokenizer:
    """A few Kohonen updates and gradient steps, so that weights and counter are not initial.

    Plain SGD by hand: torch.optim's first step imports far more than this needs.
    """
    model.train()
    torch.manual_seed(1)
    for _ in range(steps):
        model(torch.rand(4, 3, 32, 32)).loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 1e-3 * p.grad
                p.grad = None
        model.quantizer.update_codebook()
    return model.eval()


@pytest.fixture
def model():
    return tiny()


@pytest.fixture
def images():
    torch.manual_seed(5)
    return torch.rand(6, 3, 32, 32)


# ---- presets and config ----


def test_presets_shapes():
    expected = {"cifar10": (4, 32, 512, 64), "tiny": (4, 32, 64, 16), "large": (8, 64, 512, 64)}
    for name, (down, size, K, D) in expected.items():
        config = PRESETS[name]
        assert (config.downsample, config.image_size) == (down, size), name
        assert (config.quantizer.codebook_size, config.quantizer.dim) == (K, D), name
        assert config.latent_shape == (8, 8), name
    assert PRESETS["cifar10"].channels == (64, 128)
    assert PRESETS["cifar10"].res_channels == 32
    assert PRESETS["tiny"].quantizer.map_shape == (8, 8)


def test_cifar10_architecture_is_the_papers():
    model = SomTokenizer()  # default: the cifar10 preset
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    shapes = [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs]
    assert shapes[:3] == [
        (3, 64, (4, 4), (2, 2)),
        (64, 128, (4, 4), (2, 2)),
        (128, 128, (3, 3), (1, 1)),
    ]
    assert shapes[-1] == (128, 64, (1, 1), (1, 1))
    assert [s[:2] for s in shapes[3:-1]] == [(128, 32), (32, 128)] * 2  # two residual blocks
    ups = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(u.in_channels, u.out_channels) for u in ups] == [(128, 64), (64, 3)]
    with torch.no_grad():
        assert model.encode_latents(torch.rand(2, 3, 32, 32)).shape == (2, 64, 8, 8)


def test_config_round_trips_through_json():
    config = TokenizerConfig.from_preset("tiny", pixel_mean=(0.1, 0.2, 0.3))
    again = TokenizerConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.pixel_mean == (0.1, 0.2, 0.3) and again.quantizer.map_shape == (8, 8)


def test_presets_are_copied_not_shared():
    config = TokenizerConfig.from_preset("tiny")
    config.quantizer.codebook_size = 3
    assert PRESETS["tiny"].quantizer.codebook_size == 64


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": 30}, "multiple of 4"),
        ({"channels": ()}, "channels"),
        ({"pixel_std": (0.2, 0.0, 0.2)}, "pixel_std"),
        ({"pixel_mean": (0.5, 0.5)}, "pixel_mean"),
        ({"res_channels": 0}, "res_channels"),
    ],
)
def test_bad_config_is_an_error(overrides, message):
    with pytest.raises(SomtokError, match=message):
        TokenizerConfig.from_preset("tiny", **overrides)


def test_config_from_dict_refuses_unknown_and_missing_fields():
    data = TokenizerConfig.from_preset("tiny").to_dict()
    with pytest.raises(SomtokError, match="unknown fields \\['colour'\\]"):
        TokenizerConfig.from_dict({**data, "colour": 1})
    del data["channels"]
    with pytest.raises(SomtokError, match="lacks fields \\['channels'\\]"):
        TokenizerConfig.from_dict(data)
    with pytest.raises(SomtokError, match="preset='huge'"):
        TokenizerConfig.from_preset("huge")


# ---- the three verbs ----


def test_encode_and_decode_shapes_dtypes_ranges(model, images):
    idx = model.encode(images)
    assert idx.dtype == torch.int64 and idx.shape == (6, 8, 8)
    assert int(idx.min()) >= 0 and int(idx.max()) < 64
    out = model.decode_indices(idx)
    assert out.dtype == torch.float32 and out.shape == (6, 3, 32, 32)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not out.requires_grad


def test_uint8_numpy_and_float_inputs_agree(model, images):
    pixels = (images * 255).round().to(torch.uint8)
    expected = model.encode(pixels.float() / 255)
    assert torch.equal(model.encode(pixels), expected)
    assert torch.equal(model.encode(pixels.numpy()), expected)
    assert torch.equal(model.decode_indices(expected.numpy().astype(np.int32)),
                       model.decode_indices(expected))  # fmt: skip


def test_any_size_divisible_by_the_downsampling(model):
    assert model.encode(torch.rand(2, 3, 48, 64)).shape == (2, 12, 16)
    assert model.decode_indices(torch.zeros(1, 5, 3, dtype=torch.long)).shape == (1, 3, 20, 12)
    with pytest.raises(SomtokError, match="33 x 32.*multiples of 4"):
        model.encode(torch.rand(1, 3, 33, 32))


def test_large_preset_downsamples_by_8():
    torch.manual_seed(0)
    model = SomTokenizer(TokenizerConfig.from_preset("large")).eval()
    assert model.downsample == 8
    assert model.encode(torch.rand(1, 3, 64, 64)).shape == (1, 8, 8)
    with pytest.raises(SomtokError, match="multiples of 8"):
        model.encode(torch.rand(1, 3, 36, 36))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.rand(2, 3, 32, 32) * 255, "values in \\[.*expected \\[0, 1\\]"),
        (torch.rand(2, 4, 32, 32), "shape \\(2, 4, 32, 32\\)"),
        (torch.rand(3, 32, 32), "shape \\(3, 32, 32\\)"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.int32), "dtype torch.int32"),
        (torch.rand(0, 3, 32, 32), "B >= 1"),
        ([[0.5]], "type list"),
    ],
)
def test_bad_images_are_errors(model, bad, message):
    with pytest.raises(SomtokError, match=message):
        model.encode(bad)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.full((1, 8, 8), 64), "\\[64, 64\\].*index < 64"),
        (torch.full((1, 8, 8), -1), "\\[-1, -1\\]"),
        (torch.zeros(8, 8, dtype=torch.long), "shape \\(8, 8\\)"),
        (torch.zeros(1, 8, 8), "torch.float32"),
    ],
)
def test_bad_indices_are_errors(model, bad, message):
    with pytest.raises(SomtokError, match=message):
        model.decode_indices(bad)


def test_decode_of_encode_is_forwards_reconstruction(model, images):
    with torch.no_grad():
        out = model(images)
    idx = model.encode(images)
    assert torch.equal(out.indices, idx)
    assert close(model.decode_indices(idx), out.reconstruction)


def test_forward_outputs_and_loss(model, images):
    model.train()
    out = model(images)
    assert out.reconstruction.shape == images.shape and out.indices.shape == (6, 8, 8)
    assert close(out.loss, out.recon_loss + out.quantizer.loss)
    assert out.recon_loss.ndim == 0 and float(out.recon_loss.detach()) > 0
    out.loss.backward()
    assert model.encoder[0].weight.grad is not None  # straight-through reaches the encoder
    assert model.decoder[0].weight.grad is not None


def test_pixel_statistics_normalise_inside_the_model(images):
    a = tiny(pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.25, 0.25, 0.25))
    b = tiny(pixel_mean=(0.2, 0.4, 0.6), pixel_std=(0.1, 0.2, 0.3))
    b.load_state_dict(a.state_dict())
    assert not torch.equal(a.encode_latents(images), b.encode_latents(images))
    with torch.no_grad():
        z = a.encoder((images - 0.5) / 0.25)
    assert close(a.encode_latents(images), z)


def test_encode_never_touches_codebook_statistics(model, images):
    model.train()
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    model.encode(images)
    model.quantizer.update_codebook()  # nothing pending: no change, counter included
    after = model.quantizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_tokenizer_id_is_16_hex_and_tracks_config_and_codebook(model):
    assert len(model.tokenizer_id) == 16 and int(model.tokenizer_id, 16) >= 0
    assert tiny(seed=1).tokenizer_id != model.tokenizer_id  # another seed, another codebook
    other = TokenizerConfig.from_preset("tiny", pixel_mean=(0.5, 0.5, 0.5))
    assert tokenizer_id(other, model.quantizer.codebook) != model.tokenizer_id
    assert tiny(seed=0).tokenizer_id == model.tokenizer_id  # deterministic


# ---- Hub checkpoints ----


def test_save_load_gives_identical_outputs_and_counter(tmp_path, images):
    model = trained_a_little(tiny())
    assert model.quantizer.step == 3
    model.save_pretrained(tmp_path, training={"steps": 3, "data": "random"}, metrics={"mse": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    loaded = SomTokenizer.from_pretrained(tmp_path)
    assert not loaded.training
    assert loaded.quantizer.step == 3
    assert loaded.tokenizer_id == model.tokenizer_id
    state, again = model.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    idx = model.encode(images)
    assert torch.equal(loaded.encode(images), idx)
    assert torch.equal(loaded.decode_indices(idx), model.decode_indices(idx))

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tokenizer_id"] == model.tokenizer_id
    assert config["format_version"] == 1 and config["model_type"] == "somtok-tokenizer"
    assert "somtok_version" in config and config["preset"] == "tiny"
    card = (tmp_path / "README.md").read_text()
    assert model.tokenizer_id in card and "| mse | 0.5 |" in card and "| steps | 3 |" in card


def test_resave_replaces_the_card_and_load_tokenizer_reads_folders(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path, metrics={"psnr": 20.0})
    model.save_pretrained(tmp_path, metrics={"psnr": 25.0})
    assert "| psnr | 25 |" in (tmp_path / "README.md").read_text()
    assert load_tokenizer(tmp_path).tokenizer_id == model.tokenizer_id


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "tok"
    tiny().save_pretrained(folder)
    return folder


def _edit_config(folder, **changes):
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_missing_files_are_errors(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(SomtokError, match="has no model.safetensors"):
        SomTokenizer.from_pretrained(saved)
    (saved / "config.json").unlink()
    with pytest.raises(SomtokError, match="has no config.json"):
        load_tokenizer(saved)


def test_wrong_format_version_is_an_error(saved):
    _edit_config(saved, format_version=99)
    with pytest.raises(SomtokError, match="format_version 99"):
        SomTokenizer.from_pretrained(saved)


def test_a_config_of_another_model_is_an_error(saved):
    _edit_config(saved, model_type="somtok-prior")
    with pytest.raises(SomtokError, match="model_type is 'somtok-prior'"):
        SomTokenizer.from_pretrained(saved)
    (saved / "config.json").write_text("{not json")
    with pytest.raises(SomtokError, match="config"):
        SomTokenizer.from_pretrained(saved)


def test_an_edited_config_no_longer_matches_its_id(saved):
    _edit_config(saved, pixel_mean=[0.5, 0.5, 0.5])
    with pytest.raises(SomtokError, match="changed after it was saved"):
        SomTokenizer.from_pretrained(saved)


def test_weights_of_another_config_are_an_error(saved, tmp_path):
    other = tmp_path / "other"
    tiny(res_channels=4).save_pretrained(other)
    (saved / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(SomtokError, match="has shape"):
        SomTokenizer.from_pretrained(saved)


def test_missing_or_extra_weights_are_errors(saved):
    path = saved / "model.safetensors"
    state = load_file(path)
    save_file({k: v for k, v in state.items() if k != "quantizer.update_count"}, path)
    with pytest.raises(SomtokError, match="missing \\['quantizer.update_count'\\]"):
        SomTokenizer.from_pretrained(saved)
    save_file({**state, "extra": torch.zeros(1)}, path)
    with pytest.raises(SomtokError, match="unexpected \\['extra'\\]"):
        SomTokenizer.from_pretrained(saved)


def test_non_finite_or_corrupt_weights_are_errors(saved):
    path = saved / "model.safetensors"
    state = load_file(path)
    state["decoder.0.weight"][0, 0, 0, 0] = math.nan
    save_file(state, path)
    with pytest.raises(SomtokError, match=r"hold NaN or infinite values in \['decoder.0.weight'\]"):
        SomTokenizer.from_pretrained(saved)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(SomtokError, match="cannot read tokenizer weights"):
        SomTokenizer.from_pretrained(saved)


def test_no_shipped_tokenizer_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "DEFAULT_TOKENIZER", tmp_path / "absent")
    with pytest.raises(SomtokError, match="train-tokenizer.*--tokenizer"):
        load_tokenizer()


def test_unknown_hub_id_offline_and_missing_folders_are_errors():
    with pytest.raises(SomtokError, match="neither a checkpoint folder nor a Hub model"):
        load_tokenizer("somtok-tests/no-such-tokenizer")
    with pytest.raises(SomtokError, match="is not a folder"):
        load_tokenizer("./no/such/folder")


# ---- fast inference ----


@pytest.mark.slow
def test_compiled_encoder_matches_eager_and_steps_aside_when_stale(model):
    from somtok import limits

    torch.manual_seed(3)
    batch = torch.rand(limits.ENCODE_BATCH_SIZE, 3, 32, 32)
    eager = model.encode(batch)
    model.optimize_for_inference()
    assert torch.equal(model.encode(batch), eager)
    assert model._compiled is not None and not model._compiled.failed
    trained_a_little(model, steps=1)  # train() drops the compiled encoder
    assert model._compiled is None
    model.optimize_for_inference()
    model.encode(batch)
    with torch.no_grad():
        model.quantizer.codebook.mul_(2)  # weights changed after compiling: eager again
    assert not model._compiled.usable(model, batch)
    assert torch.equal(model.encode(batch), model._encode_eager(batch))


def test_bf16_encoding_changes_few_tokens_and_no_quality():
    """The shipped tokenizer on 256 real CIFAR-10 test images: bfloat16 convolutions move about
    1 % of the tokens to a near-tie code, and the reconstructions score the same PSNR."""
    from somtok.tokenizer.data import load_images

    pixels = np.array(load_images("sample", "test", 32, limit=256).images)
    shipped = load_tokenizer()
    exact = shipped.encode(pixels)
    fast = load_tokenizer().optimize_for_inference(precision="bf16", compile=False)
    assert fast.encode_precision == "bf16" and fast._compiled is None
    quick = fast.encode(pixels)
    assert quick.dtype == torch.int64 and quick.shape == exact.shape
    agree = float((quick == exact).float().mean())
    assert 0.97 <= agree < 1.0  # < 1: the convolutions really ran in bfloat16

    def psnr(tokens):
        x = torch.from_numpy(pixels).float() / 255
        mse = (shipped.decode_indices(tokens) - x).square().mean((1, 2, 3))
        return float((-10 * torch.log10(mse)).mean())

    assert abs(psnr(quick) - psnr(exact)) < 0.05
    fast.optimize_for_inference(compile=False)  # back to fp32: exact again
    assert torch.equal(fast.encode(pixels), exact)


def test_unknown_encode_precision_is_an_error(model):
    with pytest.raises(SomtokError, match="precision 'fp16' given; expected one of fp32, bf16"):
        model.optimize_for_inference(precision="fp16")
    assert model.encode_precision == "fp32" and model._compiled is None
