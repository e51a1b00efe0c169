"""Training plumbing shared by the tokenizer and prior trainers (Hugging Face accelerate).

What lives here is independent of the model being trained: the run-folder layout, saving and
resuming accelerate state safely, the metrics file, TensorBoard, seeding, the non-finite check,
a steps/s clock, and the step loop both trainers run (``StepLoop``).

A run folder (DESIGN.md "Run folders")::

    runs/NAME/
        train_config.json     the training settings (read back by --resume)
        state/step_N/         accelerate state + progress.json, written as step_N.tmp and renamed
        metrics.jsonl         one JSON object per line: {"step", "split", metric: value, ...}
        tb/                   TensorBoard event files
        plots/                PNGs written during training
        config.json, model.safetensors, README.md   the exported model (Hub layout), at the end

A checkpoint folder is complete once it is named ``step_N`` and holds ``progress.json``: both are
the last things written, so a process killed mid-save leaves only a ``.tmp`` folder, which
resume ignores and the next save removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    gather_object,
    set_seed,
)
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from somtok.errors import SomtokError
from somtok.fileio import check_folder

logger = logging.getLogger(__name__)

RUNS_ROOT = Path("runs")
PROGRESS_FILE = "progress.json"
TRACKER_NAME = "tb"  # TensorBoard writes into runs/NAME/tb
MIXED_PRECISION = ("no", "bf16", "fp16")
_STEP_DIR = re.compile(r"^step_(\d+)$")


class NonFiniteLossError(SomtokError):
    """Training produced a NaN or infinite loss; the run stops without saving that state."""


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run folder."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def train_config(self) -> Path:
        return self.root / "train_config.json"

    def step_dir(self, step: int) -> Path:
        return self.state / f"step_{step}"

    def make(self) -> None:
        for folder in (self.root, self.state, self.plots):
            folder.mkdir(parents=True, exist_ok=True)


def resolve_run_dir(run_dir: str | os.PathLike | None, name: str | None, default_name: str) -> Path:
    """The run folder: ``run_dir`` if given, else ``runs/<name or default_name>``; SomtokError
    if it cannot be made or written (a file in its place or above it, no permission)."""
    if run_dir is not None:
        return check_folder(run_dir, f"run folder {str(run_dir)!r}")
    name = name or default_name
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise SomtokError(f"--name {name!r} is not a plain folder name; expected e.g. 'ksom-32x16'")
    return check_folder(RUNS_ROOT / name, f"run folder {str(RUNS_ROOT / name)!r}")


# --- accelerate -----------------------------------------------------------------------------


def make_accelerator(
    run: RunDir, mixed_precision: str = "no", grad_accum: int = 1, log: bool = True
) -> Accelerator:
    """One Accelerator for a run: TensorBoard under ``run.root/tb`` when ``log``.

    On a machine without a GPU the processes train on the CPU (gloo): accelerate only does
    that when told, so ``accelerate launch --multi_gpu --num_processes 2`` (torchrun) then
    gives two CPU processes.

    DDP does not broadcast buffers: the quantiser keeps its codebook identical across processes
    itself (statistics are summed before each update), and a broadcast at every forward would
    overwrite statistics that other processes accumulated between optimiser steps.
    """
    if mixed_precision not in MIXED_PRECISION:
        raise SomtokError(
            f"--mixed-precision {mixed_precision!r} is unknown; expected one of {MIXED_PRECISION}"
        )
    if grad_accum < 1:
        raise SomtokError(f"--grad-accum {grad_accum} must be at least 1")
    _forget_other_precision(mixed_precision)
    project = ProjectConfiguration(project_dir=str(run.root), logging_dir=str(run.root))
    try:
        return Accelerator(
            cpu=not has_accelerator_device(),
            mixed_precision=mixed_precision,
            gradient_accumulation_steps=grad_accum,
            log_with="tensorboard" if log else None,
            project_config=project,
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
        )
    except ValueError as err:  # e.g. fp16 on a machine without a GPU
        raise SomtokError(f"--mixed-precision {mixed_precision!r}: {err}") from err


def _forget_other_precision(mixed_precision: str) -> None:
    """Let one process train several models at different precisions (tests, benchmarks).

    accelerate keeps its state process-wide and refuses a second Accelerator with another
    mixed precision. With a single process nothing else depends on that state, so it is
    dropped (a private accelerate call: there is no public one); the process group of a
    multi-process run is never touched.
    """
    state = AcceleratorState._shared_state
    changed = bool(state) and state.get("_mixed_precision") != mixed_precision
    if changed and PartialState().num_processes == 1:
        AcceleratorState._reset_state()


def has_accelerator_device() -> bool:
    """True when torch sees a GPU (or another accelerator) to train on."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        return accelerator.is_available()
    return torch.cuda.is_available()


def prepare(accelerator: Accelerator, *objects):
    """``accelerator.prepare`` without torch's deprecation warning for the ``broadcast_buffers``
    flag accelerate still passes to DDP (its replacement does not skip the sync at start)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        return accelerator.prepare(*objects)


@contextlib.contextmanager
def seeded(seed: int, deterministic: bool = False) -> Iterator[None]:
    """Seed python, numpy and torch; with ``deterministic``, use deterministic kernels inside.

    The deterministic switch is process-wide in torch, so it is restored on the way out.
    """
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if deterministic:
        # cuBLAS needs this to be deterministic on a GPU (read when its first handle is made).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_seed(seed, deterministic=deterministic)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def init_trackers(accelerator: Accelerator, config: Mapping[str, Any], start_step: int = 0) -> None:
    """Start TensorBoard with the run settings as hyper-parameters (scalars only).

    A run resumed at ``start_step`` drops the events a killed run logged after that step.
    """
    if accelerator.log_with:
        purge = {"tensorboard": {"purge_step": start_step + 1}} if start_step else None
        accelerator.init_trackers(TRACKER_NAME, config=flat_scalars(config), init_kwargs=purge)


def flat_scalars(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested settings into ``{"a.b": scalar}``; tuples become "32x16", None "none"."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_scalars(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = "x".join(str(v) for v in value)
        elif value is None:
            flat[name] = "none"
        else:
            flat[name] = value
    return flat


# --- checkpoints ----------------------------------------------------------------------------


def list_checkpoints(state_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``state_dir``, oldest first, as (step, folder)."""
    if not state_dir.is_dir():
        return []
    found = []
    for child in state_dir.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / PROGRESS_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(state_dir: Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(state_dir)
    return found[-1] if found else None


def save_checkpoint(
    accelerator: Accelerator, run: RunDir, step: int, progress: Mapping[str, Any], keep_last: int
) -> Path:
    """Save accelerate state into ``state/step_N`` atomically; keep the ``keep_last`` newest.

    Every process calls this (accelerate writes one RNG file per process). ``progress`` (JSON)
    is written last, into the temporary folder, which is then renamed into place.
    """
    final = run.step_dir(step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / PROGRESS_FILE, {"step": step, "time": time.time(), **progress})
        _sync_folder(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _prune(run.state, keep_last)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, folder: Path) -> dict[str, Any]:
    """Restore model, optimiser, scaler and RNG state from ``folder``; return its progress."""
    progress = json.loads((folder / PROGRESS_FILE).read_text())
    accelerator.load_state(str(folder))
    return progress


def _prune(state_dir: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    for _, folder in list_checkpoints(state_dir)[:-keep_last]:
        shutil.rmtree(folder, ignore_errors=True)


def _sync_folder(folder: Path) -> None:
    """fsync every file in ``folder`` so a renamed checkpoint survives a machine crash too."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def read_json(path: Path) -> Any:
    """Parse a JSON file."""
    return json.loads(Path(path).read_text())


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically (replacing any older file)."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --- checks ---------------------------------------------------------------------------------


def check_finite(
    values: Mapping[str, float], step: int, hint: Callable[[], str] = lambda: ""
) -> None:
    """Raise NonFiniteLossError when any value (loss first) is NaN or infinite.

    ``hint`` is called only then, for advice to append (e.g. where the last checkpoint is).
    """
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if bad:
        shown = ", ".join(f"{name}={value:.4g}" for name, value in values.items())
        raise NonFiniteLossError(
            f"training stopped at step {step}: non-finite {', '.join(bad)} ({shown}); "
            f"nothing from this step was saved{hint()}"
        )


def non_finite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``module`` holding a NaN or an infinity."""
    state = module.state_dict()
    return [
        name
        for name, value in state.items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (16 hex digits) over names, dtypes, shapes and bytes of ``tensors``."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def replica_fingerprints(accelerator: Accelerator, tensors: Mapping[str, torch.Tensor]) -> list:
    """Each process's fingerprint of ``tensors`` (every process calls; all get the list).

    Raises RuntimeError when the processes disagree: a bug, since the quantiser must keep
    its codebook identical everywhere.
    """
    prints = gather_object([fingerprint(tensors)])
    if len(set(prints)) > 1:
        raise RuntimeError(f"replicas disagree on their state: fingerprints {prints}")
    return prints


# --- metrics --------------------------------------------------------------------------------


class MetricsLog:
    """Append-only JSON-lines metrics file, written by the main process only."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "split": split, **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run logs them again)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if _row_step(line) <= step]
        tmp = self.path.with_name(self.path.name + ".part")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)


def read_metrics(path: Path, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file, optionally only one split ("train" or "val")."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [row for row in rows if split is None or row.get("split") == split]


def _row_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf  # a torn last line from a killed run: drop it


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


class StepClock:
    """Optimiser steps per second since the last ``tick`` (wall clock)."""

    def __init__(self, step: int):
        self.step = step
        self.time = time.perf_counter()

    def tick(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.step) / max(now - self.time, 1e-9)
        self.step, self.time = step, now
        return rate


def mean_rows(rows: list[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over ``rows`` (all with the same names)."""
    return {name: sum(row[name] for row in rows) / len(rows) for name in rows[0]}


class StepLoop:
    """The loop both trainers run: steps, a progress bar, logging, validation and checkpoints.

    A subclass sets ``config`` (with ``steps``, ``log_every``, ``eval_every``, ``save_every``,
    ``keep_last``, ``resume``), ``run``, ``accelerator``, ``main``, ``metrics`` and the model
    returned by ``checked_module``, and provides ``train_step`` (one optimiser step, returning
    its metrics averaged over processes), ``validate``, ``progress`` (what a checkpoint records
    beside the step) and ``postfix`` (the numbers on the bar).
    """

    step: int = 0
    last_val: dict[str, float]
    nan_advice = "try a lower --lr"  # appended to the message of a non-finite loss

    def run_loop(self, tracked: Mapping[str, Any]) -> None:
        """Train from step 0 (or the latest checkpoint with ``config.resume``) to the end."""
        if self.config.resume:
            self.resume()
        init_trackers(self.accelerator, tracked, start_step=self.step)
        with logging_redirect_tqdm():  # log lines print above the bar, not through it
            self._steps()

    def _steps(self) -> None:
        bar = tqdm(
            total=self.config.steps,
            initial=self.step,
            unit="step",
            desc=self.run.root.name,
            disable=not self.main,
            dynamic_ncols=True,
        )
        window: list[dict[str, float]] = []
        clock = StepClock(self.step)
        while self.step < self.config.steps:
            window.append(self.train_step())
            self.step += 1
            bar.update(1)
            if self.due(self.config.log_every):
                values = {**self.window_mean(window), "steps_per_s": clock.tick(self.step)}
                self.log(values, "train")
                bar.set_postfix(self.postfix(values), refresh=False)
                window = []
            if self.due(self.config.eval_every):
                self.validate()
            if self.due(self.config.save_every):
                self.save()
        bar.close()

    def due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.config.steps

    def window_mean(self, rows: list[dict[str, float]]) -> dict[str, float]:
        """The metrics logged for the steps since the last log line (their mean by default)."""
        return mean_rows(rows)

    def log(self, values: Mapping[str, float], split: str) -> None:
        """One metrics row at this step: metrics.jsonl and the trackers (``split/name``)."""
        self.metrics.write(self.step, split, values)
        self.accelerator.log({f"{split}/{k}": v for k, v in values.items()}, step=self.step)

    def nan_hint(self) -> str:
        latest = latest_checkpoint(self.run.state)
        where = f"; the last checkpoint is {latest[1]}" if latest else ""
        return f"{where}; {self.nan_advice}"

    def save(self) -> Path:
        """Save accelerate state at this step; refuse (and stop) if any tensor is non-finite."""
        bad = non_finite_tensors(self.checked_module)
        anywhere = torch.tensor(float(len(bad)), device=self.accelerator.device)
        if self.accelerator.reduce(anywhere, "sum").item() > 0:  # every process stops together
            raise NonFiniteLossError(
                f"training stopped at step {self.step}: non-finite values in {bad[:5]}; "
                "this state was not saved"
            )
        progress = {**self.progress(), "val": self.last_val}
        return save_checkpoint(
            self.accelerator, self.run, self.step, progress, self.config.keep_last
        )

    def resume(self) -> None:
        """Load the newest complete checkpoint, if any, and continue from its step."""
        latest = latest_checkpoint(self.run.state)
        if latest is None:
            logger.info("no checkpoint in %s yet: starting from step 0", self.run.state)
            self.metrics.truncate_after(0)
            return
        progress = load_checkpoint(self.accelerator, latest[1])
        self.step = int(progress["step"])
        self.check_progress(progress, latest[1])
        self.last_val = progress.get("val", {})
        self.metrics.truncate_after(self.step)
        logger.info("resumed %s at step %d", self.run.root, self.step)

    def progress(self) -> dict[str, Any]:
        """What a checkpoint records beside the step and the last validation."""
        return {}

    def check_progress(self, progress: Mapping[str, Any], folder: Path) -> None:
        """Raise if the loaded state disagrees with its progress file (a bug, not bad input)."""


def config_from_args(config_class, args) -> Any:
    """The training config a command's arguments ask for; with --resume, the saved run's too.

    ``config_class`` is a dataclass with ``default_name()`` and ``from_dict``. Arguments left
    at None are not given, so a resumed run keeps its saved value; ``--eval-limit 0`` means all.
    """
    fields = config_class.__dataclass_fields__
    given = {k: v for k, v in vars(args).items() if v is not None and k in fields}
    if given.get("eval_limit") == 0:
        given["eval_limit"] = None
    config = config_class(**given)
    if not args.resume:
        return config
    root = resolve_run_dir(config.run_dir, config.name, config.default_name())
    run = RunDir(root)
    if not run.train_config.exists():
        raise SomtokError(
            f"--resume: no run at {str(root)!r} (missing train_config.json); "
            "expected --run-dir or --name of an earlier run"
        )
    saved = read_json(run.train_config)["train"]
    return config_class.from_dict({**saved, **given, "resume": True, "run_dir": str(root)})
