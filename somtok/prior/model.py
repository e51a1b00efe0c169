"""The prior: a small decoder-only transformer over token grids.

A token grid (h, w) from the tokenizer becomes one sequence of T = 1 + h * w ids: a class token
(or the null-class token when the class is unknown or dropped), then the image tokens in raster
order (row by row, left to right). The vocabulary puts the image codes first, so an image token's
id is its code index:

    0 .. K - 1            image codes
    K .. K + C - 1        class tokens, one per class
    K + C                 the null class ("no class"), also the only id of an unconditional prior

The network is a GPT-2 from ``transformers`` with learned absolute positions (the sequence length
is fixed, so nothing is gained from relative ones). Only image positions are scored: the loss and
the sampler look at the first K logits, so the model's distribution is exactly what sampling
draws from.

Shapes: B batch, h w latent (token-grid) size, K codes, C classes, T sequence length, V vocabulary.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from huggingface_hub import ModelHubMixin
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import GPT2Config, GPT2LMHeadModel

from somtok import __version__, hub
from somtok.errors import SomtokError
from somtok.fileio import atomic_output

# Version of the prior's checkpoint layout (config.json keys, weight names).
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = hub.CONFIG_FILE, hub.WEIGHTS_FILE, hub.CARD_FILE

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# Size presets: "tiny" for tests, "small" (the default) for CIFAR-10 on a CPU, "base" for a GPU.
# "small" is about 3.3 M parameters: 6.6 MB in float16, inside the ~8 MB shipped-checkpoint budget.
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_embd=32, n_head=2, dropout=0.0),
    "small": dict(n_layer=4, n_embd=256, n_head=8, dropout=0.1),
    "base": dict(n_layer=8, n_embd=384, n_head=8, dropout=0.1),
}

WEIGHT_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Vocabulary:
    """Where each kind of token lives in the prior's vocabulary (see the module docstring)."""

    codebook_size: int
    num_classes: int

    @property
    def num_image_tokens(self) -> int:
        return self.codebook_size

    @property
    def first_class_token(self) -> int:
        return self.codebook_size

    @property
    def null_token(self) -> int:
        return self.codebook_size + self.num_classes

    @property
    def size(self) -> int:
        return self.null_token + 1

    def class_tokens(self, labels: Tensor | None, batch: int, device=None) -> Tensor:
        """The first token of each sequence: int64 (B,).

        ``labels`` int (B,) in [0, C), or -1 for "no class"; None means no class for all B.
        """
        if labels is None:
            return torch.full((batch,), self.null_token, dtype=torch.long, device=device)
        labels = labels.to(device=device, dtype=torch.long)
        return torch.where(labels < 0, self.null_token, labels + self.first_class_token)


@dataclass
class PriorConfig:
    """Everything needed to rebuild a prior; saved as its config.json.

    ``tokenizer_id`` names the tokenizer whose token grids the prior models; ``latent_shape`` is
    that tokenizer's (h, w) grid and ``codebook_size`` its K.
    """

    tokenizer_id: str = ""
    codebook_size: int = 512
    latent_shape: tuple[int, int] = (8, 8)
    num_classes: int = len(CIFAR10_CLASSES)
    class_names: tuple[str, ...] = CIFAR10_CLASSES
    preset: str = "small"
    n_layer: int = PRESETS["small"]["n_layer"]
    n_embd: int = PRESETS["small"]["n_embd"]
    n_head: int = PRESETS["small"]["n_head"]
    dropout: float = PRESETS["small"]["dropout"]
    # Share of training sequences whose class is replaced by the null class, so that one model
    # also learns the unconditional distribution that classifier-free guidance needs.
    class_dropout: float = 0.1
    # How model.safetensors stores the weights; they are always float32 once loaded.
    weights_dtype: str = "float16"

    def __post_init__(self):
        self.latent_shape = tuple(int(s) for s in self.latent_shape)
        self.class_names = tuple(str(n) for n in self.class_names)
        _check_config(self)

    @classmethod
    def from_preset(cls, preset: str = "small", **overrides) -> PriorConfig:
        """A config with the sizes of ``preset`` ("tiny", "small", "base") and ``overrides``."""
        if preset not in PRESETS:
            raise SomtokError(f"preset={preset!r} is unknown; expected one of {sorted(PRESETS)}")
        return cls(preset=preset, **{**PRESETS[preset], **overrides})

    @classmethod
    def from_dict(cls, data: dict) -> PriorConfig:
        """Rebuild from a config.json mapping; keys this version does not know are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"somtok_version", "format_version", "model_type"})
        if unknown:
            raise SomtokError(f"prior config has unknown keys {unknown}; is it a somtok prior?")
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def vocab(self) -> Vocabulary:
        return Vocabulary(self.codebook_size, self.num_classes)

    @property
    def num_image_tokens(self) -> int:
        """h * w: how many tokens one image is."""
        return self.latent_shape[0] * self.latent_shape[1]

    @property
    def seq_len(self) -> int:
        """T: the class token and the image tokens."""
        return 1 + self.num_image_tokens


def _check_config(config: PriorConfig) -> None:
    if config.codebook_size < 2:
        raise SomtokError(f"codebook_size={config.codebook_size} is too small; expected >= 2")
    if len(config.latent_shape) != 2 or min(config.latent_shape) < 1:
        raise SomtokError(f"latent_shape={config.latent_shape} must be two positive integers")
    if config.num_classes < 0:
        raise SomtokError(f"num_classes={config.num_classes} must be >= 0")
    if config.class_names and len(config.class_names) != config.num_classes:
        raise SomtokError(
            f"class_names has {len(config.class_names)} names for num_classes="
            f"{config.num_classes}; expected one name per class or none"
        )
    if config.n_embd % config.n_head:
        raise SomtokError(f"n_embd={config.n_embd} is not divisible by n_head={config.n_head}")
    if not 0 <= config.class_dropout < 1:
        raise SomtokError(f"class_dropout={config.class_dropout} must be in [0, 1)")
    if config.weights_dtype not in WEIGHT_DTYPES:
        raise SomtokError(
            f"weights_dtype={config.weights_dtype!r} is unknown; expected one of "
            f"{sorted(WEIGHT_DTYPES)}"
        )


def gpt2_config(config: PriorConfig) -> GPT2Config:
    """The transformers config of the network inside a prior."""
    vocab = config.vocab
    return GPT2Config(
        vocab_size=vocab.size,
        n_positions=config.seq_len,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        # No end-of-sequence and no padding: every sequence is exactly T tokens.
        bos_token_id=vocab.null_token,
        eos_token_id=None,
        pad_token_id=None,
    )


class PriorOutput(NamedTuple):
    """What ``SomPrior.forward`` returns.

    loss: float32 scalar, mean negative log-likelihood of the image tokens in nats.
    bits_per_token: the same in bits (loss / ln 2).
    logits: float32 (B, h * w, K), the image-code logits that predicted each image token.
    """

    loss: Tensor
    bits_per_token: Tensor
    logits: Tensor


PRIOR_CARD = """---
{{ card_data }}
---

# somtok prior

An autoregressive prior (GPT-2 architecture, {{ parameters }} parameters) over the token
grids of the somtok tokenizer `{{ tokenizer_id }}`: {{ latent_h }} x {{ latent_w }} codes out of
{{ codebook_size }}, after a class token ({{ num_classes }} classes: {{ class_list }}) or a
null-class token. Trained with {{ class_dropout }} class dropout, so it samples unconditionally
and with classifier-free guidance.

{{ metrics }}

Sample with the tokenizer it was trained on:

```
somtok sample --prior PATH --tokenizer TOKENIZER --class {{ example_class }} --count 16
```

Weights are stored as {{ weights_dtype }} and loaded as float32.
"""


class SomPrior(
    nn.Module,
    ModelHubMixin,
    library_name="somtok",
    tags=["somtok", "image-generation", "autoregressive-prior"],
    model_card_template=PRIOR_CARD,
):
    """A class-conditional autoregressive model of token grids.

    Args:
        config: sizes, vocabulary and the tokenizer it belongs to.
    """

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        self.vocab = config.vocab
        self.lm = GPT2LMHeadModel(gpt2_config(config))

    @property
    def tokenizer_id(self) -> str:
        return self.config.tokenizer_id

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def sequences(self, indices: Tensor, labels: Tensor | None = None) -> Tensor:
        """Token grids to prior sequences.

        Args:
            indices: int (B, h, w) codes in [0, K).
            labels: int (B,) classes in [0, C), -1 for "no class"; None for no class at all.

        Returns: int64 (B, T) ids, T = 1 + h * w: the class token, then the codes in raster order.
        """
        self._check_grids(indices)
        self._check_labels(labels, indices.shape[0])
        image = rearrange(indices.long(), "b h w -> b (h w)")
        first = self.vocab.class_tokens(labels, image.shape[0], image.device)
        return torch.cat([first[:, None], image], dim=1)

    def forward(self, indices: Tensor, labels: Tensor | None = None) -> PriorOutput:
        """Negative log-likelihood of token grids; drops classes at random in training mode.

        Args:
            indices: int (B, h, w) codes in [0, K).
            labels: int (B,) classes, -1 for "no class"; None for no class at all.
        """
        if self.training and labels is not None and self.config.class_dropout > 0:
            labels = self.drop_classes(labels)
        seq = self.sequences(indices, labels)  # (B, T)

        # The last token predicts nothing, so the network sees T - 1 = h * w positions.
        logits = self.image_logits(seq[:, :-1])  # (B, h*w, K)
        targets = seq[:, 1:]  # (B, h*w)
        loss = F.cross_entropy(rearrange(logits, "b t k -> (b t) k"), targets.reshape(-1))
        return PriorOutput(loss=loss, bits_per_token=loss / math.log(2), logits=logits)

    def image_logits(self, seq: Tensor) -> Tensor:
        """float32 (B, L, K): the image-code logits after each of the first L tokens of ``seq``."""
        return self.lm(input_ids=seq, use_cache=False).logits[..., : self.vocab.num_image_tokens]

    def drop_classes(self, labels: Tensor) -> Tensor:
        """``labels`` with a ``class_dropout`` share replaced by -1 ("no class")."""
        drop = torch.rand(labels.shape, device=labels.device) < self.config.class_dropout
        return torch.where(drop, torch.full_like(labels, -1), labels)

    def check_tokenizer(self, tokenizer_id: str, source: str = "the tokenizer") -> None:
        """Refuse token grids or a tokenizer that this prior was not trained on."""
        if tokenizer_id != self.tokenizer_id:
            raise SomtokError(
                f"{source} has tokenizer_id {tokenizer_id!r} but this prior was trained on "
                f"tokenizer {self.tokenizer_id!r}; use the matching tokenizer, or encode the "
                "data again and train a new prior"
            )

    def check_tokens(self, tokens, source: str = "the token file") -> None:
        """Refuse a ``TokenFile`` from another tokenizer or of another grid shape."""
        self.check_tokenizer(tokens.tokenizer_id, source)
        if tuple(tokens.latent_shape) != tuple(self.config.latent_shape):
            raise SomtokError(
                f"{source} holds grids of shape {tuple(tokens.latent_shape)}; this prior models "
                f"{tuple(self.config.latent_shape)}"
            )

    def _check_grids(self, indices: Tensor) -> None:
        shape = tuple(self.config.latent_shape)
        if indices.ndim != 3 or tuple(indices.shape[1:]) != shape:
            raise SomtokError(
                f"token grids have shape {tuple(indices.shape)}; expected (B, {shape[0]}, "
                f"{shape[1]}) for this prior"
            )
        if indices.is_floating_point():
            raise SomtokError(f"token grids have dtype {indices.dtype}; expected integers")
        K = self.config.codebook_size
        if indices.numel() and (indices.min() < 0 or indices.max() >= K):
            raise SomtokError(
                f"token grids hold codes in [{int(indices.min())}, {int(indices.max())}]; "
                f"expected codes in [0, {K})"
            )

    def _check_labels(self, labels: Tensor | None, batch: int) -> None:
        if labels is None:
            return
        C = self.config.num_classes
        if labels.shape != (batch,):
            raise SomtokError(f"labels have shape {tuple(labels.shape)}; expected ({batch},)")
        if labels.numel() and (labels.min() < -1 or labels.max() >= C):
            raise SomtokError(
                f"labels hold classes in [{int(labels.min())}, {int(labels.max())}]; expected "
                f"-1 (no class) or classes in [0, {C})"
            )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- Hub layout: config.json + model.safetensors + README.md ----

    def config_dict(self) -> dict:
        """The config.json contents."""
        data = asdict(self.config)
        data.update(
            somtok_version=__version__, format_version=FORMAT_VERSION, model_type="somtok-prior"
        )
        return data

    def _save_pretrained(self, save_directory: Path) -> None:
        dtype = WEIGHT_DTYPES[self.config.weights_dtype]
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self._own_state().items()}
        with atomic_output(save_directory / WEIGHTS_FILE, force=True) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        text = json.dumps(self.config_dict(), indent=2, sort_keys=True) + "\n"
        with atomic_output(save_directory / CONFIG_FILE, force=True) as tmp:
            tmp.write_text(text, encoding="utf-8")
        # The mixin writes a card only where none exists; a re-save must replace a stale one.
        (save_directory / CARD_FILE).unlink(missing_ok=True)

    def _own_state(self) -> dict[str, Tensor]:
        """The state dict without the output layer, which shares the input embedding's weights."""
        state = self.state_dict()
        assert self.lm.lm_head.weight is self.lm.transformer.wte.weight, "lm_head is not tied"
        del state["lm.lm_head.weight"]
        return state

    def generate_model_card(self, *args, **kwargs):
        config = self.config
        names = ", ".join(config.class_names) or "none"
        values = dict(
            parameters=f"{self.num_parameters():,}",
            tokenizer_id=config.tokenizer_id or "unknown",
            latent_h=config.latent_shape[0],
            latent_w=config.latent_shape[1],
            codebook_size=config.codebook_size,
            num_classes=config.num_classes,
            class_list=names,
            class_dropout=f"{config.class_dropout:.0%}",
            example_class=config.class_names[0] if config.class_names else "none",
            weights_dtype=config.weights_dtype,
            metrics="",
        )
        return super().generate_model_card(*args, **{**values, **kwargs})

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir=None,
        force_download: bool = False,
        local_files_only: bool = False,
        token=None,
        map_location: str = "cpu",
        **model_kwargs,
    ) -> SomPrior:
        download = dict(
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        model_kwargs.pop("config", None)  # the mixin's reading of config.json; read_config checks
        if model_kwargs:
            raise TypeError(f"unexpected arguments {sorted(model_kwargs)} for from_pretrained")
        model = cls(read_config(hub.resolve_file("prior", model_id, CONFIG_FILE, **download)))
        model.load_weights(hub.resolve_file("prior", model_id, WEIGHTS_FILE, **download))
        return model.to(map_location).eval()

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a model.safetensors (float16 or float32) into this float32 model."""
        state = hub.read_weights("prior", path)
        hub.check_state("prior", state, self._own_state(), str(path))
        self.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def read_config(path: str | os.PathLike) -> PriorConfig:
    """A prior's config.json, checked for its format version."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SomtokError(f"cannot read prior config {str(path)!r}: {err}") from err
    if data.get("model_type") != "somtok-prior":
        raise SomtokError(f"{str(path)!r} is not a somtok prior config (model_type is missing)")
    if data.get("format_version") != FORMAT_VERSION:
        raise SomtokError(
            f"prior {str(path)!r} has format_version {data.get('format_version')!r}; this "
            f"somtok reads format_version {FORMAT_VERSION}"
        )
    return PriorConfig.from_dict(data)


def load_prior(path_or_id: str | os.PathLike | None = None) -> SomPrior:
    """A prior from a folder or a Hub repo id; None means the shipped one (checkpoints/prior).

    Raises SomtokError for a missing folder, a folder that is not a prior, or an id the Hub
    cannot serve (offline, unknown).
    """
    from somtok import paths

    if path_or_id is None:
        if not paths.DEFAULT_PRIOR.is_dir():
            raise SomtokError(
                f"no prior at {str(paths.DEFAULT_PRIOR)!r} (none is shipped yet); train one "
                "with `somtok train-prior` or pass --prior PATH_OR_HUB_ID"
            )
        path_or_id = paths.DEFAULT_PRIOR
    target = str(path_or_id)
    hub.check_source("prior", target, _CHECKPOINT)
    with hub.clear_errors("prior", target, _CHECKPOINT):
        return SomPrior.from_pretrained(target)


_CHECKPOINT = (
    "expected a folder with config.json and model.safetensors written by `somtok train-prior` "
    "(the run folder), or a Hub repo id"
)


def with_tokenizer(config: PriorConfig, tokenizer_id: str, K: int, latent_shape) -> PriorConfig:
    """``config`` describing the grids of one tokenizer."""
    return replace(
        config, tokenizer_id=tokenizer_id, codebook_size=int(K), latent_shape=tuple(latent_shape)
    )
