"""Train a SomTokenizer with Hugging Face accelerate (``somtok train-tokenizer``).

Run the same code on one process or under ``accelerate launch --num_processes P``:

- ``batch_size`` is the *global* batch of one forward pass, split evenly over the processes;
  an optimiser step sees ``batch_size * grad_accum`` images. So a 2-process run and a
  1-process run with the same settings take the same optimiser steps on the same images.
- The data order is a fresh permutation per epoch, seeded by (seed, epoch), and global batch
  number g (= step * grad_accum + micro-batch) is always the same images. A resumed run
  therefore continues the exact order from its step counter alone.
- After each optimiser step the quantiser's ``update_codebook()`` sums the Kohonen statistics
  over processes and advances its counter, so ``steps`` counts codebook updates too and the
  neighbourhood schedule continues across a resume.

The run folder layout is described in ``somtok.training``. Shapes: B batch, K codes, D code
dimension, h w the token grid.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from somtok import training
from somtok.errors import SomtokError
from somtok.tokenizer import data as datasets
from somtok.tokenizer import plots
from somtok.tokenizer.model import PRESETS, SomTokenizer, TokenizerConfig
from somtok.tokenizer.quantizer import QUANTIZERS

logger = logging.getLogger(__name__)

# Images used to measure the per-channel pixel mean and std: a few thousand pin them down to
# the third decimal; all 50,000 CIFAR-10 images would only cost time.
PIXEL_STATS_IMAGES = 4096

# Reconstruction grids are enlarged this many times: 32 x 32 images are too small to judge.
PLOT_SCALE = 2

# DESIGN.md: the paper clips the gradient norm at 1.0.
GRAD_CLIP = 1.0

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
)


@dataclass
class TrainConfig:
    """Everything ``train_tokenizer`` needs; saved as ``train_config.json`` in the run folder.

    ``None`` for ``map_shape``, ``init_cluster_size`` or ``codebook_init`` keeps the value of
    the preset and quantiser. ``batch_size`` is global (see the module docstring).
    """

    data: str = "sample"
    preset: str = "cifar10"
    quantizer: str = "ksom-hard"
    map_shape: tuple[int, ...] | None = None
    toroidal: bool = False
    init_cluster_size: float | None = None
    codebook_init: str | None = None
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    mixed_precision: str = "no"
    grad_accum: int = 1
    seed: int = 0
    train_limit: int | None = None
    eval_limit: int | None = 1000
    save_every: int = 500
    eval_every: int = 500
    log_every: int = 10
    keep_last: int = 3
    plot_images: int = 16
    deterministic: bool = False
    run_dir: str | None = None
    name: str | None = None
    resume: bool = False

    def default_name(self) -> str:
        shape = "x".join(map(str, self.map_shape)) if self.map_shape else "default"
        return f"{self.preset}-{self.quantizer}-{shape}-seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in known})
        if config.map_shape is not None:
            config.map_shape = tuple(config.map_shape)
        return config


def train_tokenizer(config: TrainConfig) -> Path:
    """Train (or, with ``config.resume``, continue) a tokenizer; return its run folder.

    The run folder ends up holding the exported model in Hub layout, which
    ``SomTokenizer.from_pretrained`` / ``--tokenizer`` read. Raises SomtokError for bad
    settings, and ``training.NonFiniteLossError`` when the loss turns NaN or infinite.
    """
    check_config(config)
    run = training.RunDir(
        training.resolve_run_dir(config.run_dir, config.name, config.default_name())
    )
    config = _settle_run_config(run, config)
    accelerator = training.make_accelerator(run, config.mixed_precision, config.grad_accum)
    with training.seeded(config.seed, config.deterministic):
        trainer = Trainer(config, run, accelerator)
        trainer.fit()
        trainer.export()
    accelerator.end_training()
    return run.root


def check_config(config: TrainConfig) -> None:
    """Raise SomtokError naming the first setting that cannot work."""
    if config.preset not in PRESETS:
        raise SomtokError(f"--preset {config.preset!r} is unknown; expected one of {list(PRESETS)}")
    if config.quantizer not in QUANTIZERS:
        raise SomtokError(
            f"--quantizer {config.quantizer!r} is unknown; expected one of {list(QUANTIZERS)}"
        )
    positive = (
        "steps",
        "batch_size",
        "grad_accum",
        "save_every",
        "eval_every",
        "log_every",
        "plot_images",
    )
    for name in positive:
        if getattr(config, name) < 1:
            raise SomtokError(f"--{name.replace('_', '-')} {getattr(config, name)} must be >= 1")
    if not config.lr > 0:
        raise SomtokError(f"--lr {config.lr} must be positive")
    for name in ("train_limit", "eval_limit"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise SomtokError(f"--{name.replace('_', '-')} {value} must be >= 1")


def _settle_run_config(run: training.RunDir, config: TrainConfig) -> TrainConfig:
    """Refuse to train over another run; on resume, check the settings against the saved ones."""
    saved_path = run.train_config
    if not config.resume:
        if saved_path.exists() or training.list_checkpoints(run.state):
            raise SomtokError(
                f"run folder {str(run.root)!r} already holds a run; pass --resume to continue "
                "it, or choose another --name / --run-dir"
            )
        return config
    if not saved_path.exists():
        raise SomtokError(
            f"--resume: {str(saved_path)!r} not found; expected the folder of an earlier run"
        )
    saved = TrainConfig.from_dict(training.read_json(saved_path)["train"])
    for f in dataclasses.fields(TrainConfig):
        if f.name in RESUMABLE_FIELDS:
            continue
        if getattr(saved, f.name) != getattr(config, f.name):
            raise SomtokError(
                f"--resume: {f.name} is {getattr(config, f.name)!r} but the run at "
                f"{str(run.root)!r} was trained with {getattr(saved, f.name)!r}"
            )
    return config


# --- data -----------------------------------------------------------------------------------


class BatchOrder:
    """Which images make up global batch number ``g``: a pure function of (seed, g).

    Each epoch is a permutation drawn from numpy's generator seeded with (seed, epoch); the
    last incomplete batch of an epoch is dropped.
    """

    def __init__(self, num_images: int, batch_size: int, seed: int):
        if num_images < batch_size:
            raise SomtokError(
                f"--batch-size {batch_size} is larger than the {num_images} training images; "
                "expected a smaller batch or more data (--limit)"
            )
        self.num_images = num_images
        self.batch_size = batch_size
        self.seed = seed
        self.per_epoch = num_images // batch_size
        self._epoch: int | None = None
        self._order: np.ndarray | None = None

    def __call__(self, g: int) -> np.ndarray:
        """Image indices of global batch ``g``: int64 (batch_size,)."""
        epoch, position = divmod(g, self.per_epoch)
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_images)
            self._epoch = epoch
        start = position * self.batch_size
        return self._order[start : start + self.batch_size]


def shard(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This process's equal share of a global batch (contiguous slices, rank order)."""
    if len(indices) % world:
        raise SomtokError(
            f"--batch-size {len(indices)} does not split over {world} processes; "
            f"expected a multiple of {world}"
        )
    per = len(indices) // world
    return indices[rank * per : (rank + 1) * per]


def pixel_stats(images: np.ndarray, limit: int = PIXEL_STATS_IMAGES, seed: int = 0):
    """Per-channel mean and std of [0, 1] pixels over up to ``limit`` images.

    ``images``: uint8 (N, 3, H, W), possibly memory-mapped. A seeded random subset, read in
    index order (fast on a memory map). Returns two tuples of 3 floats.
    """
    n = len(images)
    picked = np.sort(np.random.default_rng(seed).permutation(n)[: min(limit, n)])
    total = np.zeros(3)
    squares = np.zeros(3)
    for start in range(0, len(picked), 1024):
        chunk = images[picked[start : start + 1024]].astype(np.float64) / 255.0  # (b, 3, H, W)
        total += chunk.sum(axis=(0, 2, 3))
        squares += (chunk**2).sum(axis=(0, 2, 3))
    count = len(picked) * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# --- model ----------------------------------------------------------------------------------


def model_config(config: TrainConfig, mean, std) -> TokenizerConfig:
    """The preset, with the quantiser choice, map and measured pixel statistics applied."""
    preset = PRESETS[config.preset]
    quantizer = dataclasses.replace(preset.quantizer, **QUANTIZERS[config.quantizer])
    changes: dict[str, Any] = {"toroidal": config.toroidal}
    if config.map_shape is not None:
        changes["map_shape"] = tuple(config.map_shape)
        changes["codebook_size"] = math.prod(config.map_shape)
    if config.init_cluster_size is not None:
        changes["init_cluster_size"] = config.init_cluster_size
    if config.codebook_init is not None:
        changes["init"] = config.codebook_init
    quantizer = dataclasses.replace(quantizer, **changes)
    return dataclasses.replace(
        preset, quantizer=quantizer, pixel_mean=tuple(mean), pixel_std=tuple(std)
    )


# --- the loop -------------------------------------------------------------------------------


class Trainer(training.StepLoop):
    """One training run: data, model, optimiser, and the steps between saves.

    Every process builds one; only the main process writes files (accelerate writes the
    per-process RNG files of a checkpoint itself).
    """

    nan_advice = "try a lower --lr, or --mixed-precision no"

    def __init__(self, config: TrainConfig, run: training.RunDir, accelerator):
        self.config = config
        self.run = run
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.step = 0
        size = PRESETS[config.preset].image_size
        with accelerator.main_process_first():  # one process decodes, the others read the cache
            self.train_set = datasets.load_images(config.data, "train", size, config.train_limit)
            self.val_set = datasets.load_images(config.data, "test", size, config.eval_limit)
        self.model_config = self._model_config()
        model = SomTokenizer(self.model_config)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.model, self.optimizer = training.prepare(accelerator, model, optimizer)
        self.order = BatchOrder(len(self.train_set.images), config.batch_size, config.seed)
        self.metrics = training.MetricsLog(run.metrics, enabled=self.main)
        self.last_val: dict[str, float] = {}

    @property
    def tokenizer(self) -> SomTokenizer:
        return self.accelerator.unwrap_model(self.model)

    @property
    def checked_module(self) -> SomTokenizer:
        return self.tokenizer  # its codebook statistics included

    def _model_config(self) -> TokenizerConfig:
        """Measure pixel statistics (or read them back on resume) and build the model config."""
        if self.config.resume:
            saved = training.read_json(self.run.train_config)
            return model_config(self.config, saved["pixel_mean"], saved["pixel_std"])
        mean, std = pixel_stats(self.train_set.images, seed=self.config.seed)
        if self.main:
            self.run.make()
            training.write_json(
                self.run.train_config,
                {"train": self.config.to_dict(), "pixel_mean": mean, "pixel_std": std},
            )
        self.accelerator.wait_for_everyone()
        return model_config(self.config, mean, std)

    # -- driving

    def fit(self) -> None:
        """Train from step 0 (or the latest checkpoint) up to ``config.steps``."""
        self.run_loop(self._tracked_config())

    def train_step(self) -> dict[str, float]:
        """One optimiser step (``grad_accum`` forward/backward passes); returns batch metrics."""
        self.model.train()
        values: dict[str, float] = {}
        for micro in range(self.config.grad_accum):
            images = self._batch(self.step * self.config.grad_accum + micro)
            with self.accelerator.accumulate(self.model):
                out = self.model(images)
                values = self._batch_metrics(out, images)
                training.check_finite(values, self.step + 1, hint=self.nan_hint)
                self.accelerator.backward(out.loss)
                if self.accelerator.sync_gradients:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if self.accelerator.sync_gradients:
                self.tokenizer.quantizer.update_codebook()
        return values

    def _batch(self, g: int) -> torch.Tensor:
        """This process's images of global batch ``g``: float32 (B / P, 3, H, W) in [0, 1]."""
        idx = shard(self.order(g), self.accelerator.process_index, self.accelerator.num_processes)
        images = torch.from_numpy(np.ascontiguousarray(self.train_set.images[idx]))
        return images.to(self.accelerator.device).float().div_(255.0)

    def _batch_metrics(self, out, images: torch.Tensor) -> dict[str, float]:
        """Loss terms, MSE/PSNR on [0, 1] pixels and code usage, averaged over processes."""
        q = out.quantizer
        parts = {"loss": out.loss, "recon_loss": out.recon_loss}
        parts.update({name: value for name, value in q.losses.items() if name not in parts})
        parts["mse"] = (out.reconstruction.float() - images).pow(2).mean()
        parts["perplexity"] = torch.as_tensor(q.perplexity)
        parts["usage"] = torch.as_tensor(q.codes_used) / self.model_config.quantizer.codebook_size
        names = list(parts)
        stacked = torch.stack([torch.as_tensor(parts[n]).detach().float() for n in names])
        stacked = self.accelerator.reduce(stacked.to(self.accelerator.device), "mean")
        return dict(zip(names, stacked.tolist(), strict=True))

    def window_mean(self, rows: list[dict[str, float]]) -> dict[str, float]:
        values = {**training.mean_rows(rows), "lr": self.config.lr}
        values["psnr"] = _psnr(values["mse"])  # of the mean MSE, not a mean of PSNRs
        return values

    def postfix(self, values: dict[str, float]) -> dict[str, str]:
        return {
            "loss": f"{values['loss']:.4f}",
            "psnr": f"{values['psnr']:.2f}",
            "usage": f"{100 * values['usage']:.0f}%",
            "ppl": f"{values['perplexity']:.0f}",
        }

    # -- validation, plots

    def validate(self) -> dict[str, float]:
        """Metrics on the test split, shared over processes; plots from the main process."""
        values = evaluate_sharded(self.tokenizer, self.val_set.images, self.accelerator)
        self.last_val = values
        self.log(values, "val")
        if self.main:
            self._plot()
            logger.info("step %d validation: %s", self.step, _fmt(values))
        return values

    def _plot(self) -> None:
        count = min(self.config.plot_images, len(self.val_set.images))
        images = torch.from_numpy(np.array(self.val_set.images[:count]))  # a copy: writable
        tokenizer = self.tokenizer
        was_training = tokenizer.training
        tokenizer.eval()
        with torch.no_grad():
            recon = tokenizer.decode_indices(tokenizer.encode(images.float() / 255.0))
            grid = plots.reconstruction_grid(images, recon, scale=PLOT_SCALE)
            atlas = plots.codebook_atlas(tokenizer)
        tokenizer.train(was_training)
        plots.save_png(grid, self.run.plots / "reconstructions.png")
        plots.save_png(atlas, self.run.plots / "codebook_atlas.png")

    # -- checkpoints

    def progress(self) -> dict[str, Any]:
        """The quantiser's update counter, and a fingerprint of its state on every process."""
        quantizer = self.tokenizer.quantizer
        prints = training.replica_fingerprints(self.accelerator, quantizer.state_dict())
        return {"quantizer_step": int(quantizer.step), "quantizer_fingerprints": prints}

    def check_progress(self, progress: dict[str, Any], folder: Path) -> None:
        if int(self.tokenizer.quantizer.step) != int(progress["quantizer_step"]):
            raise RuntimeError(
                f"checkpoint {folder} holds quantizer step {self.tokenizer.quantizer.step}, "
                f"its progress file says {progress['quantizer_step']}"
            )

    # -- the end

    def export(self) -> Path:
        """Write the model in Hub layout at the root of the run folder (main process).

        The model card records the data, steps, settings and the last validation metrics.
        """
        if self.main:
            self.tokenizer.eval()
            self.tokenizer.save_pretrained(
                self.run.root, training=self.card_training(), metrics=self.last_val
            )
        self.accelerator.wait_for_everyone()
        return self.run.root

    def card_training(self) -> dict[str, Any]:
        """What the model card says about the training run."""
        c, q = self.config, self.model_config.quantizer
        return {
            "data": c.data,
            "training images": len(self.train_set.images),
            "validation images": len(self.val_set.images),
            "steps": self.step,
            "quantizer": c.quantizer,
            "N0 (init_cluster_size)": q.init_cluster_size,
            "codebook init": q.init,
            "batch size": c.batch_size,
            "gradient accumulation": c.grad_accum,
            "optimiser": f"Adam, lr {c.lr}, gradient-norm clip {GRAD_CLIP}",
            "mixed precision": c.mixed_precision,
            "processes": self.accelerator.num_processes,
            "seed": c.seed,
        }

    def _tracked_config(self) -> dict[str, Any]:
        return {
            "train": self.config.to_dict(),
            "quantizer_settings": dataclasses.asdict(self.model_config.quantizer),
        }


def evaluate_sharded(tokenizer: SomTokenizer, images: np.ndarray, accelerator) -> dict[str, float]:
    """Validation metrics over ``images`` (uint8 (N, 3, H, W)), each process taking a share.

    Sums (squared error, code counts, topographic errors) are added over processes before the
    ratios are taken, so the result equals a single-process evaluation up to float rounding.
    """
    from somtok.tokenizer import evaluate

    was_training = tokenizer.training
    tokenizer.eval()
    share = np.array_split(np.arange(len(images)), accelerator.num_processes)
    sums = evaluate.metric_sums(tokenizer, images, share[accelerator.process_index])
    sums = {k: accelerator.reduce(v.to(accelerator.device), "sum").cpu() for k, v in sums.items()}
    tokenizer.train(was_training)
    return evaluate.metrics_from_sums(sums)


def _psnr(mse: float) -> float:
    """PSNR in dB of an MSE on [0, 1] pixels."""
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf


def _num(value: float) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={_num(v)}" for k, v in values.items())
