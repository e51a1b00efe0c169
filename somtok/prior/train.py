"""Train the prior with Hugging Face accelerate (``somtok train-prior``).

Two stages:

1. ``encode_dataset`` turns one split of a dataset into a token file (DESIGN.md "Contracts"),
   with the class labels, once per tokenizer: the file lives in a cache keyed by the tokenizer's
   id, the source's content and the split, and is reused while its ``tokenizer_id`` matches.
2. ``train_prior`` fits a ``SomPrior`` to the training grids and measures the negative
   log-likelihood of the test grids in bits per token.

The run folder, checkpoints, metrics and resuming work as for the tokenizer (``somtok.training``):
``batch_size`` is the global batch, split over the processes; batch number g is always the same
grids (a permutation per epoch seeded by (seed, epoch)), so a resumed run continues the exact
order from its step counter alone.

Shapes: B batch, h w latent size, K codes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from somtok import limits, training
from somtok.errors import SomtokError
from somtok.prior.model import PRESETS, PriorConfig, SomPrior
from somtok.tokenizer.train import BatchOrder, shard

logger = logging.getLogger(__name__)

# Gradient-norm clipping, as for the tokenizer; transformers are prone to rare loss spikes.
GRAD_CLIP = 1.0
# AdamW betas of GPT-style training: a shorter second-moment memory than Adam's default 0.999
# keeps small-batch steps stable.
BETAS = (0.9, 0.95)
# Classes shown in plots/samples.png (one row each); more would make a tall picture.
PLOT_CLASSES = 10
# The learning rate decays on a cosine from its peak to this fraction of it.
FINAL_LR_FRACTION = 0.1

# Settings a resumed run may change; every other field must match the saved run.
RESUMABLE_FIELDS = (
    "steps",
    "save_every",
    "eval_every",
    "eval_limit",
    "log_every",
    "keep_last",
    "plot_images",
    "resume",
    "run_dir",
    "name",
    "tokenizer",
    "cache_dir",
)


@dataclass
class PriorTrainConfig:
    """Everything ``train_prior`` needs; saved in ``train_config.json`` in the run folder.

    ``tokenizer`` is a tokenizer folder (None: the shipped one). ``batch_size`` is global.
    ``dropout`` None keeps the preset's. ``eval_limit`` None scores every test grid.
    """

    tokenizer: str | None = None
    data: str = "sample"
    preset: str = "small"
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    class_dropout: float = 0.1
    dropout: float | None = None
    mixed_precision: str = "no"
    seed: int = 0
    train_limit: int | None = None
    eval_limit: int | None = 1000
    save_every: int = 500
    eval_every: int = 500
    log_every: int = 10
    keep_last: int = 3
    plot_images: int = 16
    cache_dir: str | None = None
    run_dir: str | None = None
    name: str | None = None
    resume: bool = False

    def default_name(self) -> str:
        return f"prior-{self.preset}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PriorTrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def check_train_config(config: PriorTrainConfig) -> None:
    """Raise SomtokError naming the first setting that cannot work."""
    if config.preset not in PRESETS:
        raise SomtokError(f"--preset {config.preset!r} is unknown; expected one of {list(PRESETS)}")
    for name in ("steps", "batch_size", "save_every", "eval_every", "log_every"):
        if getattr(config, name) < 1:
            raise SomtokError(f"--{name.replace('_', '-')} {getattr(config, name)} must be >= 1")
    if config.plot_images < 0:
        raise SomtokError(f"--plot-images {config.plot_images} must be >= 0")
    for name in ("train_limit", "eval_limit"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise SomtokError(f"--{name.replace('_', '-')} {value} must be >= 1")
    if not config.lr > 0:
        raise SomtokError(f"--lr {config.lr} must be positive")
    if config.warmup < 0 or config.weight_decay < 0:
        raise SomtokError("--warmup and --weight-decay must be >= 0")
    if not 0 <= config.class_dropout < 1:
        raise SomtokError(f"--class-dropout {config.class_dropout} must be in [0, 1)")
    if config.dropout is not None and not 0 <= config.dropout < 1:
        raise SomtokError(f"--dropout {config.dropout} must be in [0, 1)")


def lr_at(step: int, config: PriorTrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine decay.

    A pure function of the step, so a resumed run needs no scheduler state.
    """
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    span = max(config.steps - config.warmup, 1)
    progress = min((step - config.warmup) / span, 1.0)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * cosine)


# --- encoding a dataset ---------------------------------------------------------------------


class EncodedSplit(NamedTuple):
    """One split as token grids: indices int64 (N, h, w); labels int64 (N,) or None."""

    indices: torch.Tensor
    labels: torch.Tensor | None
    class_names: list[str] | None
    path: Path


def token_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """Where encoded datasets live: ``cache_dir``, else ``$SOMTOK_CACHE_DIR/tokens``, else
    ``~/.cache/somtok/tokens``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SOMTOK_CACHE_DIR")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "somtok"
    return root / "tokens"


def encode_dataset(
    tokenizer,
    source: str,
    split: str,
    limit: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> EncodedSplit:
    """Token grids (with labels) of ``split`` of ``source``, encoded once per tokenizer.

    The token file is named by the tokenizer's id, the split and a hash of the decoded images'
    cache key (which follows the source's files), so a new tokenizer or an edited source is
    encoded afresh; a cached file whose ``tokenizer_id`` differs is encoded again too.
    """
    from somtok.tokenizer import data, tokens

    images = data.load_images(source, split, tokenizer.config.image_size, limit)
    tokenizer_id = tokenizer.tokenizer_id
    path = token_cache_dir(cache_dir) / _token_file_name(tokenizer_id, split, images)
    if path.is_file():
        cached = _load_cached(path)
        if _matches(cached, tokenizer_id, len(images)):
            logger.info("reusing %s (%d grids)", path, len(cached))
            return EncodedSplit(cached.indices, cached.labels, images.class_names, path)
        logger.info("%s is stale or belongs to another tokenizer: encoding again", path)

    indices = encode_images(tokenizer, images.images, progress=progress, desc=f"encoding {split}")
    labels = None if images.labels is None else torch.from_numpy(np.array(images.labels, np.int64))
    encoded = tokens.TokenFile.for_tokenizer(tokenizer, indices, labels, list(images.names))
    tokens.save_tokens(path, encoded, force=True)
    return EncodedSplit(encoded.indices, encoded.labels, images.class_names, path)


def _load_cached(path: Path):
    """A cached token file, or None when it cannot be read (a damaged cache is rebuilt)."""
    from somtok.tokenizer import tokens

    try:
        return tokens.load_tokens(path)
    except SomtokError as err:
        logger.warning("ignoring the cached token file: %s", err)
        return None


def _matches(cached, tokenizer_id: str, count: int) -> bool:
    return cached is not None and cached.tokenizer_id == tokenizer_id and len(cached) == count


def _token_file_name(tokenizer_id: str, split: str, images) -> str:
    """``<tokenizer_id>-<split>-<source hash>.safetensors``: the cache key of one encoding."""
    content = getattr(images.images, "filename", None) or json.dumps(
        [images.source, len(images), list(images.names)]
    )
    digest = hashlib.sha256(f"{images.source}\n{content}".encode()).hexdigest()[:16]
    safe_split = "".join(ch if ch.isalnum() else "_" for ch in split)
    return f"{tokenizer_id}-{safe_split}-{digest}.safetensors"


@torch.no_grad()
def encode_images(tokenizer, images: np.ndarray, progress: bool = True, desc: str = "encoding"):
    """uint8 (N, 3, H, W) images (a memory map is fine) -> int64 (N, h, w) token grids."""
    was_training = tokenizer.training
    tokenizer.eval()
    step = limits.ENCODE_BATCH_SIZE
    out = []
    for start in tqdm(range(0, len(images), step), desc=desc, unit="batch", disable=not progress):
        batch = torch.from_numpy(
            np.array(images[start : start + step])
        )  # a copy: maps are read-only
        out.append(tokenizer.encode(batch.to(tokenizer.device)).cpu())
    tokenizer.train(was_training)
    return torch.cat(out)


# --- the prior's config ---------------------------------------------------------------------


def prior_config(config: PriorTrainConfig, tokenizer, class_names: list[str] | None, labels):
    """The preset, sized for ``tokenizer``'s grids and the dataset's classes."""
    num_classes = len(class_names) if class_names else _count_classes(labels)
    overrides: dict[str, Any] = dict(
        tokenizer_id=tokenizer.tokenizer_id,
        codebook_size=tokenizer.codebook_size,
        latent_shape=tuple(tokenizer.config.latent_shape),
        num_classes=num_classes,
        class_names=tuple(class_names) if class_names else (),
        class_dropout=config.class_dropout,
    )
    if config.dropout is not None:
        overrides["dropout"] = config.dropout
    return PriorConfig.from_preset(config.preset, **overrides)


def _count_classes(labels: torch.Tensor | None) -> int:
    if labels is None or len(labels) == 0:
        return 0
    return int(labels.max()) + 1


# --- the loop -------------------------------------------------------------------------------


def train_prior(config: PriorTrainConfig) -> Path:
    """Train (or, with ``config.resume``, continue) a prior; return its run folder.

    The run folder ends up holding the prior in Hub layout (``--prior`` reads it). Raises
    SomtokError for bad settings or a tokenizer that differs from the run's, and
    ``training.NonFiniteLossError`` when the loss turns NaN or infinite.
    """
    from somtok.tokenizer.model import load_tokenizer

    check_train_config(config)
    run = training.RunDir(
        training.resolve_run_dir(config.run_dir, config.name, config.default_name())
    )
    saved = _settle_run_config(run, config)
    tokenizer = load_tokenizer(config.tokenizer)
    if saved is not None and saved["tokenizer_id"] != tokenizer.tokenizer_id:
        raise SomtokError(
            f"--resume: tokenizer {config.tokenizer!r} has tokenizer_id "
            f"{tokenizer.tokenizer_id!r} but the run at {str(run.root)!r} was trained on "
            f"{saved['tokenizer_id']!r}"
        )
    accelerator = training.make_accelerator(run, config.mixed_precision)
    with training.seeded(config.seed):
        trainer = PriorTrainer(config, run, accelerator, tokenizer)
        trainer.fit()
        trainer.export()
    accelerator.end_training()
    return run.root


def _settle_run_config(run: training.RunDir, config: PriorTrainConfig) -> dict | None:
    """Refuse to train over another run; on resume, check settings; return the saved file."""
    if not config.resume:
        if run.train_config.exists() or training.list_checkpoints(run.state):
            raise SomtokError(
                f"run folder {str(run.root)!r} already holds a run; pass --resume to continue "
                "it, or choose another --name / --run-dir"
            )
        return None
    if not run.train_config.exists():
        raise SomtokError(
            f"--resume: {str(run.train_config)!r} not found; expected the folder of an earlier run"
        )
    saved = training.read_json(run.train_config)
    before = PriorTrainConfig.from_dict(saved["train"])
    for f in dataclasses.fields(PriorTrainConfig):
        if f.name not in RESUMABLE_FIELDS and getattr(before, f.name) != getattr(config, f.name):
            raise SomtokError(
                f"--resume: {f.name} is {getattr(config, f.name)!r} but the run at "
                f"{str(run.root)!r} was trained with {getattr(before, f.name)!r}"
            )
    return saved


class PriorTrainer(training.StepLoop):
    """One training run of the prior; every process builds one, the main one writes files."""

    def __init__(self, config: PriorTrainConfig, run: training.RunDir, accelerator, tokenizer):
        self.config = config
        self.run = run
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.step = 0
        self.tokenizer_id = tokenizer.tokenizer_id
        self.tokenizer = tokenizer.to(accelerator.device)  # encode and plot on this device
        self.train_set = self._encode(self.tokenizer, "train", config.train_limit)
        self.val_set = self._encode(self.tokenizer, "test", config.eval_limit)
        self.model_config = prior_config(
            config, tokenizer, self.train_set.class_names, self.train_set.labels
        )
        self._write_run_config()
        model = SomPrior(self.model_config)
        optimizer = torch.optim.AdamW(
            _param_groups(model, config.weight_decay), lr=config.lr, betas=BETAS
        )
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.order = BatchOrder(len(self.train_set.indices), config.batch_size, config.seed)
        self.metrics = training.MetricsLog(run.metrics, enabled=self.main)
        self.last_val: dict[str, float] = {}

    @property
    def prior(self) -> SomPrior:
        return self.accelerator.unwrap_model(self.model)

    @property
    def checked_module(self) -> SomPrior:
        return self.prior

    def _encode(self, tokenizer, split: str, limit: int | None) -> EncodedSplit:
        """Encode on the main process first; the others then read its cached file."""
        with self.accelerator.main_process_first():
            return encode_dataset(
                tokenizer, self.config.data, split, limit, self.config.cache_dir, self.main
            )

    def _write_run_config(self) -> None:
        if self.main and not self.config.resume:
            self.run.make()
            training.write_json(
                self.run.train_config,
                {
                    "train": self.config.to_dict(),
                    "tokenizer_id": self.tokenizer_id,
                    "prior": dataclasses.asdict(self.model_config),
                },
            )
        self.accelerator.wait_for_everyone()

    # -- driving

    def fit(self) -> None:
        """Train from step 0 (or the latest checkpoint) up to ``config.steps``."""
        self.run_loop({"train": self.config.to_dict()})

    def train_step(self) -> dict[str, float]:
        """One optimiser step on one global batch; returns its metrics averaged over processes."""
        self.model.train()
        lr = lr_at(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        indices, labels = self._batch(self.step)
        out = self.model(indices, labels)
        values = self._reduce({"loss": out.loss, "bits_per_token": out.bits_per_token})
        training.check_finite(values, self.step + 1, hint=self.nan_hint)
        self.accelerator.backward(out.loss)
        self.accelerator.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {**values, "lr": lr}

    def _batch(self, g: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This process's share of global batch ``g``: grids (B / P, h, w), labels (B / P,)."""
        idx = shard(self.order(g), self.accelerator.process_index, self.accelerator.num_processes)
        idx = torch.from_numpy(idx)
        device = self.accelerator.device
        labels = self.train_set.labels
        return (
            self.train_set.indices[idx].to(device),
            None if labels is None else labels[idx].to(device),
        )

    def _reduce(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        names = list(values)
        stacked = torch.stack([values[n].detach().float() for n in names])
        stacked = self.accelerator.reduce(stacked, "mean")
        return dict(zip(names, stacked.tolist(), strict=True))

    def postfix(self, values: dict[str, float]) -> dict[str, str]:
        return {
            "loss": f"{values['loss']:.3f}",
            "bits": f"{values['bits_per_token']:.3f}",
            "val": f"{self.last_val.get('bits_per_token', math.nan):.3f}",
        }

    # -- validation

    def validate(self) -> dict[str, float]:
        """Bits per token on the test grids: with their classes and with none."""
        values = evaluate_sharded(
            self.prior, self.val_set.indices, self.val_set.labels, self.accelerator
        )
        self.last_val = values
        self.log(values, "val")
        if self.main:
            logger.info("step %d validation: %s", self.step, _fmt(values))
            if self.config.plot_images:
                self._plot()
        return values

    def _plot(self) -> None:
        """plots/samples.png: a few samples per class (or unconditional ones), decoded."""
        from somtok.prior.sample import sample_tokens
        from somtok.tokenizer import plots

        prior = self.prior
        was_training = prior.training
        classes = list(range(min(prior.config.num_classes, PLOT_CLASSES))) or [None]
        per_class = max(1, self.config.plot_images // len(classes))
        grids = [sample_tokens(prior, per_class, c, seed=self.config.seed).indices for c in classes]
        prior.train(was_training)
        images = self.tokenizer.decode_indices(torch.cat(grids).to(self.tokenizer.device))
        plots.save_png(plots.image_grid(images, per_class), self.run.plots / "samples.png")

    def export(self) -> Path:
        """Write the prior in Hub layout at the root of the run folder (main process)."""
        if self.main:
            tmp = self.run.root / ".export.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            prior = self.prior.eval()
            card = {"metrics": self.card_metrics()}
            prior.save_pretrained(tmp, model_card_kwargs=card)
            for path in sorted(tmp.iterdir()):
                path.replace(self.run.root / path.name)
            tmp.rmdir()
        self.accelerator.wait_for_everyone()
        return self.run.root

    def card_metrics(self) -> str:
        """Markdown for the model card: data, training and validation."""
        rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in self.last_val.items())
        c = self.config
        return (
            f"Trained with `somtok train-prior` on `{c.data}` "
            f"({len(self.train_set.indices)} training grids): {self.step} steps, batch "
            f"{c.batch_size}, AdamW lr {c.lr} (warm-up {c.warmup}, cosine decay), seed {c.seed}."
            f"\n\nValidation on {len(self.val_set.indices)} test grids (negative log-likelihood "
            f"in bits per token; log2 K = {math.log2(self.model_config.codebook_size):.2f} for "
            f"a uniform guess):\n\n| metric | value |\n| --- | --- |\n{rows}"
        )


def _param_groups(model: SomPrior, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases, norms and embeddings are left alone."""
    decay, rest = [], []
    for name, param in model.named_parameters():
        matrix = param.ndim >= 2 and "wte" not in name and "wpe" not in name
        (decay if matrix else rest).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]


@torch.no_grad()
def evaluate_sharded(
    prior: SomPrior, indices: torch.Tensor, labels: torch.Tensor | None, accelerator
) -> dict[str, float]:
    """Mean bits per image token over the grids, each process scoring a share.

    Returns ``bits_per_token`` (with the grids' classes; without classes if there are none)
    and, for a class-conditional prior, ``bits_per_token_uncond`` (every class set to null).
    """
    was_training = prior.training
    prior.eval()
    share = np.array_split(np.arange(len(indices)), accelerator.num_processes)
    mine = torch.from_numpy(share[accelerator.process_index])
    sums = torch.zeros(3, dtype=torch.float64)  # cond bits, uncond bits, grids
    for start in range(0, len(mine), limits.ENCODE_BATCH_SIZE):
        idx = mine[start : start + limits.ENCODE_BATCH_SIZE]
        grids = indices[idx].to(accelerator.device)
        sums[0] += _sum_bits(prior, grids, None if labels is None else labels[idx])
        if labels is not None:
            sums[1] += _sum_bits(prior, grids, torch.full((len(idx),), -1))
        sums[2] += len(idx)
    sums = accelerator.reduce(sums.to(accelerator.device), "sum").cpu()
    prior.train(was_training)
    count = max(float(sums[2]), 1.0)  # every grid has the same number of tokens
    values = {"bits_per_token": float(sums[0]) / count}
    if labels is not None:
        values["bits_per_token_uncond"] = float(sums[1]) / count
    return values


def _sum_bits(prior: SomPrior, grids: torch.Tensor, labels: torch.Tensor | None) -> float:
    """Sum over the grids of each grid's mean bits per token."""
    if labels is not None:
        labels = labels.to(grids.device)
    return prior(grids, labels).bits_per_token.item() * grids.shape[0]


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in values.items())
