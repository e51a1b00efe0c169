"""The prior: vocabulary and sequence layout, learning, sampling, guidance, Hub I/O, checks."""

import json
import math

import pytest
import torch

from somtok.errors import SomtokError
from somtok.prior.model import PriorConfig, SomPrior, Vocabulary, load_prior, read_config
from somtok.prior.sample import (
    ImageCodeMask,
    generation_config,
    resolve_class,
    sample_tokens,
)

K = 16
SHAPE = (3, 4)
CLASSES = ("cat", "dog", "ship", "frog")
TOKENIZER_ID = "0123456789abcdef"


def tiny_config(**changes) -> PriorConfig:
    values = dict(
        tokenizer_id=TOKENIZER_ID,
        codebook_size=K,
        latent_shape=SHAPE,
        num_classes=len(CLASSES),
        class_names=CLASSES,
    )
    return PriorConfig.from_preset("tiny", **{**values, **changes})


def tiny_prior(seed: int = 0, **changes) -> SomPrior:
    """A random tiny prior; weights drawn wider than GPT-2's init so that greedy samples vary
    from position to position (at std 0.02 a random model repeats one code)."""
    torch.manual_seed(seed)
    prior = SomPrior(tiny_config(**changes)).eval()
    with torch.no_grad():
        for weight in prior.parameters():
            if weight.ndim == 2:
                weight.normal_(0.0, 0.3)
    return prior


@pytest.fixture(scope="module")
def memorised():
    """A tiny prior trained until it knows four grids, one per class, by heart."""
    torch.manual_seed(0)
    grids = torch.randint(0, K, (len(CLASSES), *SHAPE))
    labels = torch.arange(len(CLASSES))
    prior = SomPrior(tiny_config(n_embd=64, class_dropout=0.0))
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    prior.train()
    for _ in range(150):
        loss = prior(grids, labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return prior.eval(), grids, labels


# ---- vocabulary and sequences


def test_vocabulary_is_codes_then_classes_then_null():
    vocab = Vocabulary(codebook_size=K, num_classes=4)
    assert (vocab.first_class_token, vocab.null_token, vocab.size) == (16, 20, 21)
    tokens = vocab.class_tokens(torch.tensor([0, 3, -1]), 3)
    assert tokens.tolist() == [16, 19, 20]
    assert vocab.class_tokens(None, 2).tolist() == [20, 20]
    assert Vocabulary(codebook_size=K, num_classes=0).size == K + 1


def test_network_sizes_follow_the_config():
    prior = tiny_prior()
    assert prior.lm.config.vocab_size == K + len(CLASSES) + 1
    assert prior.lm.config.n_positions == prior.config.seq_len == 1 + 12


def test_sequence_is_class_token_then_grid_in_raster_order():
    prior = tiny_prior()
    grid = torch.arange(12).reshape(1, *SHAPE)
    seq = prior.sequences(torch.cat([grid, grid]), torch.tensor([2, -1]))
    assert seq.shape == (2, 13)
    assert seq[:, 0].tolist() == [K + 2, K + len(CLASSES)]
    assert seq[0, 1:].tolist() == list(range(12))  # row 0 (0..3), row 1 (4..7), row 2


@pytest.mark.parametrize(
    "grids, labels, message",
    [
        (torch.zeros(2, 4, 3, dtype=torch.long), None, "shape"),
        (torch.full((2, *SHAPE), K), None, "codes in"),
        (torch.full((2, *SHAPE), -1), None, "codes in"),
        (torch.zeros(2, *SHAPE), None, "dtype"),
        (torch.zeros(2, *SHAPE, dtype=torch.long), torch.tensor([0, 4]), "labels"),
        (torch.zeros(2, *SHAPE, dtype=torch.long), torch.tensor([0]), "labels"),
    ],
)
def test_bad_grids_and_labels_are_refused(grids, labels, message):
    with pytest.raises(SomtokError, match=message):
        tiny_prior()(grids, labels)


def test_config_checks():
    with pytest.raises(SomtokError, match="class_names"):
        tiny_config(num_classes=3)
    with pytest.raises(SomtokError, match="preset"):
        PriorConfig.from_preset("huge")
    with pytest.raises(SomtokError, match="n_embd"):
        tiny_config(n_embd=30, n_head=4)


def test_class_dropout_replaces_about_its_share():
    prior = tiny_prior(class_dropout=0.1)
    torch.manual_seed(1)
    dropped = prior.drop_classes(torch.zeros(20_000, dtype=torch.long)) == -1
    assert abs(dropped.float().mean().item() - 0.1) < 0.01


# ---- learning and sampling


def test_a_tiny_prior_memorises_a_handful_of_grids(memorised):
    prior, grids, labels = memorised
    with torch.no_grad():
        out = prior(grids, labels)
    assert out.loss.item() < 0.05 * math.log(K)
    assert math.isclose(out.bits_per_token.item(), out.loss.item() / math.log(2), rel_tol=1e-6)
    assert out.logits.shape == (4, 12, K)

    # Greedy samples of each class are the grid it learned for that class.
    for c in range(len(CLASSES)):
        sample = sample_tokens(prior, 2, c, temperature=0)
        assert torch.equal(sample.indices, grids[c].expand(2, *SHAPE))
        assert sample.labels.tolist() == [c, c]


def test_samples_have_the_grid_shape_and_only_image_codes():
    prior = tiny_prior()
    # Make the network prefer the null token by far: its logit is ~ 10 * n_embd, the codes' ~ 0.
    with torch.no_grad():
        prior.lm.transformer.ln_f.weight.zero_()
        prior.lm.transformer.ln_f.bias.fill_(1.0)
        prior.lm.transformer.wte.weight[prior.vocab.null_token] = 10.0
    bare = prior.lm.generate(
        torch.full((3, 1), prior.vocab.null_token),
        generation_config=generation_config(prior.config, use_cache=True),
    )
    assert (bare[:, 1:] == prior.vocab.null_token).all()  # without the mask: no image at all

    for guidance in (1.0, 3.0):
        out = sample_tokens(prior, 5, "dog", guidance_scale=guidance, batch_size=2, seed=1)
        assert out.indices.shape == (5, *SHAPE)
        assert out.indices.dtype == torch.int64
        assert out.indices.min() >= 0 and out.indices.max() < K
    assert sample_tokens(prior, 3).labels is None


def test_image_code_mask_leaves_codes_alone():
    scores = torch.randn(2, K + 5)
    masked = ImageCodeMask(K)(torch.zeros(2, 1, dtype=torch.long), scores)
    assert torch.equal(masked[:, :K], scores[:, :K])
    assert torch.isinf(masked[:, K:]).all()


def test_the_same_seed_gives_the_same_samples():
    prior = tiny_prior()
    kwargs = dict(guidance_scale=2.0, top_k=8, top_p=0.9, temperature=1.5, batch_size=3)
    a = sample_tokens(prior, 5, "ship", seed=7, **kwargs).indices
    b = sample_tokens(prior, 5, "ship", seed=7, **kwargs).indices
    c = sample_tokens(prior, 5, "ship", seed=8, **kwargs).indices
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _guided_reference(prior: SomPrior, label: int, scale: float) -> torch.Tensor:
    """Greedy guided decoding recomputing every prefix from scratch: no cache, no generate."""
    vocab = prior.vocab
    cond = torch.tensor([[vocab.first_class_token + label]])
    uncond = torch.tensor([[vocab.null_token]])
    with torch.no_grad():
        for _ in range(prior.config.num_image_tokens):
            c = prior.image_logits(cond)[:, -1]
            u = prior.image_logits(uncond)[:, -1]
            code = (u + scale * (c - u)).argmax(dim=-1, keepdim=True)
            cond, uncond = torch.cat([cond, code], 1), torch.cat([uncond, code], 1)
    return cond[:, 1:].reshape(1, *SHAPE)


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_guided_sampling_with_the_cache_matches_a_recomputation(scale):
    prior = tiny_prior(seed=3)
    expected = _guided_reference(prior, label=1, scale=scale)
    assert not torch.equal(expected, _guided_reference(prior, label=1, scale=1.0))
    assert len(expected.unique()) > 2
    for use_cache in (True, False):
        got = sample_tokens(prior, 1, 1, temperature=0, guidance_scale=scale, use_cache=use_cache)
        assert torch.equal(got.indices, expected)


def test_guidance_zero_is_unconditional_and_one_is_conditional():
    prior = tiny_prior(seed=4)
    uncond = sample_tokens(prior, 4, None, seed=5).indices
    assert torch.equal(sample_tokens(prior, 4, "cat", guidance_scale=0.0, seed=5).indices, uncond)
    assert sample_tokens(prior, 4, "cat", guidance_scale=0.0).labels is None

    cond = sample_tokens(prior, 4, "cat", guidance_scale=1.0, seed=5).indices
    assert not torch.equal(cond, uncond)
    greedy = sample_tokens(prior, 1, "cat", temperature=0).indices
    assert torch.equal(greedy, _guided_reference(prior, label=0, scale=1.0))


def test_the_cache_does_not_change_samples():
    prior = tiny_prior(seed=2)
    a = sample_tokens(prior, 4, "frog", guidance_scale=2.0, seed=1, use_cache=True)
    b = sample_tokens(prior, 4, "frog", guidance_scale=2.0, seed=1, use_cache=False)
    assert torch.equal(a.indices, b.indices)


# ---- parameters


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=K + 1), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(guidance_scale=float("inf")), "guidance_scale"),
        (dict(num_samples=0), "count"),
        (dict(batch_size=0), "batch_size"),
        (dict(seed=-1), "seed"),
        (dict(class_label="zebra"), "zebra"),
        (dict(class_label=4), "out of range"),
        (dict(class_label=None, guidance_scale=2.0), "needs a class"),
    ],
)
def test_each_bad_parameter_has_its_error(kwargs, message):
    kwargs = {"num_samples": 1, "class_label": 0, **kwargs}
    with pytest.raises(SomtokError, match=message):
        sample_tokens(tiny_prior(), **kwargs)


def test_classes_by_name_or_index():
    config = tiny_config()
    assert resolve_class(config, "DOG") == 1
    assert resolve_class(config, "2") == 2
    assert resolve_class(config, 3) == 3
    assert resolve_class(config, None) is None
    with pytest.raises(SomtokError, match="no classes"):
        resolve_class(tiny_config(num_classes=0, class_names=()), "cat")


def test_a_prior_without_classes_samples_unconditionally():
    prior = tiny_prior(num_classes=0, class_names=())
    assert prior.vocab.size == K + 1
    assert sample_tokens(prior, 2).indices.shape == (2, *SHAPE)


# ---- Hub layout and the tokenizer id


def test_save_then_load_gives_identical_logits(tmp_path):
    prior = tiny_prior(weights_dtype="float32")
    grids = torch.randint(0, K, (3, *SHAPE))
    labels = torch.tensor([0, -1, 3])
    prior.save_pretrained(tmp_path)
    loaded = load_prior(tmp_path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(prior(grids, labels).logits, loaded(grids, labels).logits)
    assert loaded.config == prior.config


def test_float16_weights_load_as_float32(tmp_path):
    prior = tiny_prior()
    prior.save_pretrained(tmp_path / "a")
    loaded = load_prior(tmp_path / "a")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert loaded.lm.lm_head.weight is loaded.lm.transformer.wte.weight
    grids = torch.randint(0, K, (3, *SHAPE))
    with torch.no_grad():
        close = torch.allclose(prior(grids).logits, loaded(grids).logits, atol=1e-2)
        assert close
        loaded.save_pretrained(tmp_path / "b")
        again = load_prior(tmp_path / "b")
        assert torch.equal(loaded(grids).logits, again(grids).logits)


def test_checkpoint_files_and_config(tmp_path):
    prior = tiny_prior()
    prior.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tokenizer_id"] == TOKENIZER_ID
    assert config["latent_shape"] == list(SHAPE)
    assert config["class_names"] == list(CLASSES)
    assert {"somtok_version", "format_version"} <= set(config)
    assert TOKENIZER_ID in (tmp_path / "README.md").read_text()

    config["format_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SomtokError, match="format_version"):
        read_config(tmp_path / "config.json")


def test_missing_prior_is_a_clear_error(tmp_path):
    with pytest.raises(SomtokError, match="not a folder"):
        load_prior(tmp_path / "nowhere")
    with pytest.raises(SomtokError, match="config.json"):
        load_prior(tmp_path)


def test_a_prior_refuses_another_tokenizer():
    prior = tiny_prior()
    prior.check_tokenizer(TOKENIZER_ID)
    with pytest.raises(SomtokError, match="fedcba9876543210.*0123456789abcdef"):
        prior.check_tokenizer("fedcba9876543210")


def test_damaged_checkpoints_are_clear_errors(tmp_path):
    tiny_prior().save_pretrained(tmp_path / "a")
    tiny_prior(n_embd=64).save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_bytes((tmp_path / "a" / "config.json").read_bytes())
    with pytest.raises(SomtokError, match="misshapen"):
        load_prior(tmp_path / "b")
    (tmp_path / "a" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SomtokError, match="cannot read prior weights"):
        load_prior(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text("{not json")
    with pytest.raises(SomtokError, match="unreadable"):
        load_prior(tmp_path / "a")


def test_a_prior_refuses_tokens_of_another_tokenizer():
    from somtok.tokenizer.tokens import TokenFile

    prior = tiny_prior()
    grids = torch.zeros(2, *SHAPE, dtype=torch.long)
    mine = TokenFile(grids, tokenizer_id=TOKENIZER_ID, codebook_size=K, map_shape=(4, 4))
    prior.check_tokens(mine)
    other = TokenFile(grids, tokenizer_id="f" * 16, codebook_size=K, map_shape=(4, 4))
    with pytest.raises(SomtokError, match="f{16}"):
        prior.check_tokens(other)
