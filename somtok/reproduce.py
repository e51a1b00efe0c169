"""Re-run the paper's comparisons on our code (``somtok reproduce``): the sweep and its runs.

Irie, Csordás and Schmidhuber (ICANN 2024) claim that KSOM is faster than a well-configured
EMA-VQ only early in training, that final reconstruction is comparable, that KSOM is far more
robust to the initial cluster size N0 = 0, and that its codebook is ordered, so shifting token
indices changes an image gradually. The sweep trains one tokenizer per (setting, seed), measures
each, and ``somtok.reproduce_report`` turns the measurements into tables, plots and a verdict on
each claim.

The output folder OUT holds one sweep::

    OUT/sweep.json              the settings every run of OUT shares (data, preset, steps, ...)
    OUT/sweep.lock              held while a sweep runs, so that two cannot run on one OUT
    OUT/<setting>-seed<k>/      a training run folder (see ``somtok.training``), plus
        reproduce.json          the final measurements; written last, it marks the run finished
        reproduce-failed.json   written instead when training diverged (a finding, not a crash)
        plots/final_atlas.png   the codebook atlas of the exported model
        plots/shift_strip.png   test images, their reconstruction, then shifted by 1..4 cells

Beside the report DOC, the sweep keeps a record of each finished or failed run, without weights,
so that the report can be rebuilt and the sweep continued on a machine that lacks OUT (a sweep
on a CPU spans more than one working session)::

    DOC_STEM/runs/sweep.json            the shared settings, as in OUT
    DOC_STEM/runs/<setting>-seed<k>/    reproduce.json (or reproduce-failed.json), metrics.jsonl,
                                        and plots/ for the seed-0 runs the report pictures

Resuming: a finished or failed run, in OUT or recorded beside DOC, is skipped; a run with a
training folder continues from its newest checkpoint (``train_tokenizer`` with ``resume``); a
trained but unmeasured run is only measured. Delete a run's folder and its record to train it
again.

Shapes: B images, h w token grid, K codes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import shutil
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from einops import rearrange

from somtok import training
from somtok.errors import SomtokError
from somtok.fileio import atomic_output, check_folder

if TYPE_CHECKING:
    from somtok.tokenizer.train import TrainConfig

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("runs/reproduce")
SWEEP_FILE = "sweep.json"
LOCK_FILE = "sweep.lock"
RECORD_FILE = "reproduce.json"
FAILED_FILE = "reproduce-failed.json"
ATLAS_FILE = "final_atlas.png"
STRIP_FILE = "shift_strip.png"

# The paper's full setting: what "final" means in its claims.
PAPER_STEPS = 30_000
PAPER_BATCH_SIZE = 256
PAPER_EVAL_EVERY = 1000  # 30 points on each validation curve

# Test images whose decodes are compared before and after a one-cell shift: the mean pixel
# change settles to three digits well before 256 images.
SHIFT_IMAGES = 256
# The shift strip: a few test images, shifted by 0..SHIFT_STRIP_MAX cells (the paper shows 0..4).
SHIFT_STRIP_IMAGES = 4
SHIFT_STRIP_MAX = 4

# A run's files that its record beside the report keeps (those that exist), and the settings
# whose seed-0 pictures the report shows, so their records keep those too.
RECORD_PARTS = (RECORD_FILE, FAILED_FILE, "metrics.jsonl")
PICTURE_PARTS = (f"plots/{ATLAS_FILE}", f"plots/{STRIP_FILE}")
RECORDS_DIR = "runs"

# Checkpoints kept per run: the newest is all resume needs, one more survives a bad disk write.
KEEP_LAST = 2

# Settings that every run of one OUT folder must share, or the table would mix them.
SHARED_FIELDS = ("data", "preset", "steps", "batch_size", "eval_every", "eval_limit")
# Training settings a run found in OUT must have been trained with (beside its quantiser).
RUN_FIELDS = (
    "data",
    "preset",
    "batch_size",
    "lr",
    "grad_accum",
    "mixed_precision",
    "seed",
    "train_limit",
    "eval_limit",
    "eval_every",
)


@dataclass(frozen=True)
class Setting:
    """One configuration of the comparison.

    ``init_cluster_size`` is N0 (None: the quantiser's default, for learned codebooks where it
    plays no part); ``one_d`` trains on a 1-D map of all K codes; a ``repeated`` setting is
    trained with every seed, the others with seed 0 only.
    """

    name: str
    label: str
    quantizer: str
    init_cluster_size: float | None = None
    one_d: bool = False
    repeated: bool = True


SETTINGS: tuple[Setting, ...] = (
    Setting("ema-n0=1", "EMA-VQ, N0 = 1", "ema", 1.0),
    Setting("ksom-hard-n0=1", "KSOM hard 2-D, N0 = 1", "ksom-hard", 1.0),
    Setting("ema-n0=0", "EMA-VQ, N0 = 0", "ema", 0.0),
    Setting("ksom-hard-n0=0", "KSOM hard 2-D, N0 = 0", "ksom-hard", 0.0),
    Setting("ksom-gaussian", "KSOM Gaussian 2-D, N0 = 1", "ksom-gaussian", 1.0, repeated=False),
    Setting("ksom-hard-1d", "KSOM hard 1-D, N0 = 1", "ksom-hard", 1.0, True, repeated=False),
    Setting("vq", "VQ, learned codebook", "vq", repeated=False),
    Setting("gd-som", "GD-SOM (Kohonen weight 0.1)", "gd-som", repeated=False),
)
SETTING_NAMES = tuple(s.name for s in SETTINGS)

# The roles the claims refer to.
EMA = "ema-n0=1"
KSOM = "ksom-hard-n0=1"
EMA_N0_ZERO = "ema-n0=0"
KSOM_N0_ZERO = "ksom-hard-n0=0"
PICTURED = (EMA, KSOM, EMA_N0_ZERO, KSOM_N0_ZERO)


@dataclass
class SweepConfig:
    """What ``run_sweep`` trains and where; the defaults are the CPU-scale comparison.

    ``eval_limit`` None validates on the whole test split. ``only`` picks settings by name
    (None: all). ``doc`` is the Markdown report (None: OUT/RESULTS.md).
    """

    out: Path = DEFAULT_OUT
    data: str = "cifar10"
    preset: str = "cifar10"
    steps: int = 1500
    batch_size: int = 128
    eval_every: int = 250
    eval_limit: int | None = 2000
    seeds: int = 3
    only: tuple[str, ...] | None = None
    doc: Path | None = None

    def __post_init__(self):
        self.out = Path(self.out)
        self.doc = Path(self.doc) if self.doc is not None else None
        for name in ("steps", "batch_size", "eval_every", "seeds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                flag = "--" + name.replace("_", "-")
                raise SomtokError(f"{flag} {value!r} is invalid; expected an integer >= 1")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise SomtokError(f"--eval-limit {self.eval_limit} is invalid; expected >= 1 (0: all)")
        self.settings()  # check --only

    def shared(self) -> dict[str, Any]:
        """The settings all runs of OUT share (SHARED_FIELDS)."""
        return {name: getattr(self, name) for name in SHARED_FIELDS}

    def settings(self) -> list[Setting]:
        """The settings ``only`` picks, in SETTINGS order."""
        if self.only is None:
            return list(SETTINGS)
        unknown = [name for name in self.only if name not in SETTING_NAMES]
        if unknown or not self.only:
            raise SomtokError(
                f"--only {','.join(self.only)!r} names unknown settings {unknown}; "
                f"expected some of {', '.join(SETTING_NAMES)}"
            )
        return [s for s in SETTINGS if s.name in self.only]

    @property
    def doc_path(self) -> Path:
        return self.doc if self.doc is not None else self.out / "RESULTS.md"

    @property
    def records(self) -> Path:
        """The folder of run records beside the report: docs/RESULTS.md -> docs/results/runs."""
        return assets_folder(self.doc_path) / RECORDS_DIR


def assets_folder(doc: Path) -> Path:
    """The folder beside ``doc`` holding its CSV files and plots: docs/RESULTS.md -> results/."""
    return doc.parent / doc.stem.lower()


class RunSpec(NamedTuple):
    """One run of the sweep: a setting trained with one seed."""

    setting: Setting
    seed: int

    @property
    def name(self) -> str:
        return f"{self.setting.name}-seed{self.seed}"


def plan(settings: Sequence[Setting], seeds: int) -> list[RunSpec]:
    """The runs to train, most informative first.

    Seed 0 of every repeated setting (the EMA / KSOM pairs at N0 = 1 and 0), then the
    one-seed settings, then the further seeds, one round of the repeated settings per seed.
    """
    repeated = [s for s in settings if s.repeated]
    order = [RunSpec(s, 0) for s in repeated]
    order += [RunSpec(s, 0) for s in settings if not s.repeated]
    order += [RunSpec(s, seed) for seed in range(1, seeds) for s in repeated]
    return order


# --- the state of one run -------------------------------------------------------------------


class RunState(NamedTuple):
    """Where one run stands: ``status`` is "finished", "failed", "partial" or "new"."""

    status: str
    detail: str


def run_state(folder: Path, steps: int) -> RunState:
    """Read the state of the run in ``folder`` from the files it has left."""
    if (folder / RECORD_FILE).is_file():
        return RunState("finished", "")
    if (folder / FAILED_FILE).is_file():
        return RunState("failed", training.read_json(folder / FAILED_FILE)["error"])
    if not (folder / "train_config.json").is_file():
        return RunState("new", "not started")
    latest = training.latest_checkpoint(folder / "state")
    done = latest[0] if latest else 0
    if (folder / "model.safetensors").is_file() and last_val_step(folder) == steps:
        return RunState("partial", f"trained for {steps} steps, not yet measured")
    return RunState("partial", f"in progress: checkpoint at step {done} of {steps}")


def run_folder(config: SweepConfig, spec: RunSpec) -> Path:
    """Where run ``spec`` stands: its folder in OUT, or its record beside the report when OUT
    holds nothing of it and the record says it finished (or failed)."""
    folder = config.out / spec.name
    if run_state(folder, config.steps).status == "new":
        recorded = config.records / spec.name
        if run_state(recorded, config.steps).status in ("finished", "failed"):
            return recorded
    return folder


def save_record(config: SweepConfig, spec: RunSpec) -> None:
    """Copy the measurements of a finished or failed run in OUT to its record beside the report
    (and its pictures when the report shows them); no weights. Each file is replaced atomically.
    """
    folder, record = config.out / spec.name, config.records / spec.name
    parts = RECORD_PARTS
    if spec.seed == 0 and spec.setting.name in PICTURED:
        parts += PICTURE_PARTS
    config.records.mkdir(parents=True, exist_ok=True)
    training.write_json(config.records / SWEEP_FILE, config.shared())
    for part in parts:
        if (folder / part).is_file():
            with atomic_output(record / part, force=True) as tmp:
                shutil.copyfile(folder / part, tmp)


def check_records(config: SweepConfig) -> None:
    """Refuse records beside the report that come from a sweep with other shared settings."""
    path = config.records / SWEEP_FILE
    if not path.is_file():
        return
    saved = training.read_json(path)
    differ = [name for name, value in config.shared().items() if saved.get(name) != value]
    if differ:
        raise SomtokError(
            f"the runs recorded in {str(config.records)!r} come from a sweep with other "
            f"{', '.join(differ)}; expected the same settings, or another --doc"
        )


def last_val_step(folder: Path) -> int:
    """The step of the newest validation row in ``folder``'s metrics.jsonl (0 if none)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return 0
    return max((row["step"] for row in read_rows(path, "val")), default=0)


def read_rows(path: Path, split: str) -> list[dict[str, Any]]:
    """Rows of one split of a metrics.jsonl file, one per step (the last written wins).

    A line that does not parse is skipped: a run killed while logging leaves a torn last line
    (its resume drops it).
    """
    by_step = {}
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("split") == split:
            by_step[row["step"]] = row
    return [by_step[step] for step in sorted(by_step)]


# --- the sweep ------------------------------------------------------------------------------


def run_sweep(config: SweepConfig) -> list[RunSpec]:
    """Train and measure every planned run that is not finished or failed; return the plan.

    Raises SomtokError when OUT holds a sweep with other shared settings, or when another
    process is running a sweep on OUT. A sweep that fails before any run folder exists (a
    mistyped --data, say) takes its new sweep.json away again, so that a corrected retry is not
    refused for differing from it.
    """
    fresh = not (config.out / SWEEP_FILE).is_file()
    check_sweep_file(config)
    try:
        return _run_planned(config)
    except BaseException:
        if fresh and not any(p.is_dir() for p in config.out.iterdir()):
            (config.out / SWEEP_FILE).unlink(missing_ok=True)
        raise


def _run_planned(config: SweepConfig) -> list[RunSpec]:
    runs = plan(config.settings(), config.seeds)
    test_images = None
    check_records(config)
    with sweep_lock(config.out):
        for number, spec in enumerate(runs, start=1):
            folder = run_folder(config, spec)
            state = run_state(folder, config.steps)
            if state.status in ("finished", "failed"):
                if folder.parent == config.out:
                    save_record(config, spec)  # runs finished before records were kept
                why = f"{state.status}, skipped (delete {folder} to train it again)"
                logger.info("run %d/%d %s: %s", number, len(runs), spec.name, why)
                continue
            logger.info("run %d/%d %s: %s", number, len(runs), spec.name, state.detail)
            check_run_settings(folder, train_config(spec, config, folder, resume=True))
            if not _trained(folder, config.steps) and not _train(spec, config, folder):
                save_record(config, spec)
                continue
            if test_images is None:
                test_images = load_test_images(config)
            record = measure(folder, spec, config, test_images)
            training.write_json(folder / RECORD_FILE, record)
            save_record(config, spec)
    return runs


@contextlib.contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """Hold OUT/sweep.lock: two sweeps on one folder would train the same run twice at once.

    An advisory lock of the operating system, released when the process ends however it ends.
    It cannot see runs trained by hand (``somtok train-tokenizer``) into OUT meanwhile.
    """
    with open(out / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise SomtokError(
                f"another `somtok reproduce` is running on {str(out)!r}; expected one sweep per "
                "--out at a time (--report-only may run beside it)"
            ) from err
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_sweep_file(config: SweepConfig) -> None:
    """Save the shared settings in OUT/sweep.json, or check them against the saved ones.

    Raises SomtokError when they differ: one OUT folder holds one sweep.
    """
    path = config.out / SWEEP_FILE
    if not path.is_file():
        check_folder(config.out, f"--out {str(config.out)!r}")
        config.out.mkdir(parents=True, exist_ok=True)
        training.write_json(path, config.shared())
        return
    saved = training.read_json(path)
    for name, value in config.shared().items():
        if saved.get(name) != value:
            raise SomtokError(
                f"--{name.replace('_', '-')} is {value!r} but the sweep in {str(config.out)!r} "
                f"was run with {saved.get(name)!r}; expected the same settings, or another --out"
            )


def check_run_settings(folder: Path, expected: TrainConfig) -> None:
    """Refuse a run already in ``folder`` that was trained with other settings than the sweep's.

    Runs trained by hand (``somtok train-tokenizer``) into OUT are accepted when their model
    and training settings match; the quantiser is compared as built, so an N0 left at its
    default matches an explicit 1.
    """
    from somtok.tokenizer.train import TrainConfig, model_config

    path = folder / "train_config.json"
    if not path.is_file():
        return
    saved_file = training.read_json(path)
    saved = TrainConfig.from_dict(saved_file["train"])
    differ = [name for name in RUN_FIELDS if getattr(saved, name) != getattr(expected, name)]
    stats = (saved_file["pixel_mean"], saved_file["pixel_std"])
    if model_config(saved, *stats).quantizer != model_config(expected, *stats).quantizer:
        differ.append("quantizer settings")
    if differ:
        raise SomtokError(
            f"run {str(folder)!r} was trained with other {', '.join(differ)} than this sweep "
            "asks for; expected a run of the sweep: delete or move that folder"
        )


def _trained(folder: Path, steps: int) -> bool:
    """True when the run exported its model after training ``steps`` steps."""
    last = last_val_step(folder)
    if last > steps:
        raise SomtokError(
            f"run {str(folder)!r} was trained for {last} steps, more than --steps {steps}; "
            "expected another --out for a shorter sweep"
        )
    return (folder / "model.safetensors").is_file() and last == steps


def train_config(spec: RunSpec, config: SweepConfig, folder: Path, resume: bool) -> TrainConfig:
    """The TrainConfig of one run of the sweep."""
    from somtok.tokenizer.model import PRESETS
    from somtok.tokenizer.train import TrainConfig

    setting = spec.setting
    map_shape = None
    if setting.one_d:
        map_shape = (PRESETS[config.preset].quantizer.codebook_size,)  # all K codes on a line
    return TrainConfig(
        data=config.data,
        preset=config.preset,
        quantizer=setting.quantizer,
        map_shape=map_shape,
        init_cluster_size=setting.init_cluster_size,
        steps=config.steps,
        batch_size=config.batch_size,
        seed=spec.seed,
        eval_limit=config.eval_limit,
        eval_every=config.eval_every,
        save_every=config.eval_every,
        keep_last=KEEP_LAST,
        run_dir=str(folder),
        resume=resume,
    )


def _train(spec: RunSpec, config: SweepConfig, folder: Path) -> bool:
    """Train (or resume) one run; False, with a failure record, when training diverged."""
    from somtok.tokenizer.train import train_tokenizer

    resume = (folder / "train_config.json").is_file()
    try:
        train_tokenizer(train_config(spec, config, folder, resume))
    except training.NonFiniteLossError as err:
        logger.warning("run %s diverged: %s", spec.name, err)
        training.write_json(folder / FAILED_FILE, {"error": str(err)})
        return False
    return True


# --- measuring a trained run ----------------------------------------------------------------


def load_test_images(config: SweepConfig) -> np.ndarray:
    """The whole test split of the sweep's data: uint8 (N, 3, H, W)."""
    from somtok.tokenizer import data
    from somtok.tokenizer.model import PRESETS

    return data.load_images(config.data, "test", PRESETS[config.preset].image_size).images


def measure(folder: Path, spec: RunSpec, config: SweepConfig, images: np.ndarray) -> dict:
    """Final measurements of the model exported in ``folder``; also writes its two pictures.

    ``images``: uint8 (N, 3, H, W), the whole test split. Returns a JSON-able dict: the
    evaluation metrics on ``images`` ("test"), the mean pixel change of a one-cell shift, the
    median seconds per training step, and the device that trained.
    """
    from somtok.tokenizer import evaluate, plots
    from somtok.tokenizer.model import load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(folder, device=device)
    shifted = np.array(images[:SHIFT_IMAGES])  # a writable copy of the memory map
    record = {
        "setting": spec.setting.name,
        "seed": spec.seed,
        "sweep": config.shared(),
        "test": evaluate.evaluate_tokenizer(tokenizer, images),
        "shift_change": shift_change(tokenizer, shifted, 1),
        "shift_images": len(shifted),
        "seconds_per_step": seconds_per_step(read_rows(folder / "metrics.jsonl", "train")),
        "device": describe_device(device),
    }
    plots.save_png(plots.codebook_atlas(tokenizer), folder / "plots" / ATLAS_FILE)
    strip = shift_strip(tokenizer, shifted[:SHIFT_STRIP_IMAGES], SHIFT_STRIP_MAX)
    plots.save_png(strip, folder / "plots" / STRIP_FILE)
    return record


@torch.no_grad()
def shift_change(tokenizer, images, offset: int) -> float:
    """Mean absolute pixel change when every token moves by ``offset`` cells on every axis.

    ``images``: uint8 or float [0, 1] (B, 3, H, W). The shifted decode is compared with the
    unshifted decode (not with the image), so reconstruction error does not enter: on [0, 1]
    pixels, 0 means the shift changed nothing.
    """
    from somtok.tokenizer.walk import shift_tokens

    indices = tokenizer.encode(images)  # (B, h, w)
    moved = shift_tokens(tokenizer.quantizer.grid, indices, offset)  # (B, h, w)
    base = tokenizer.decode_indices(indices)  # (B, 3, H, W)
    return float((tokenizer.decode_indices(moved) - base).abs().mean())


@torch.no_grad()
def shift_strip(tokenizer, images, max_shift: int):
    """One row per image: the image, then its decode shifted by 0..``max_shift`` cells.

    ``images``: uint8 or float [0, 1] (B, 3, H, W). Returns a PIL image.
    """
    from somtok.tokenizer import plots
    from somtok.tokenizer.walk import shift_tokens

    indices = tokenizer.encode(images)  # (B, h, w)
    grid = tokenizer.quantizer.grid
    frames = [shift_tokens(grid, indices, s) for s in range(max_shift + 1)]
    decoded = [plots.to_uint8(tokenizer.decode_indices(f)) for f in frames]  # each (B, H, W, 3)
    columns = [plots.to_uint8(images), *decoded]
    cells = rearrange(np.stack(columns, axis=1), "b f h w c -> (b f) h w c")  # F = 2 + max_shift
    return plots.tile(cells, len(images), len(columns))


def seconds_per_step(rows: list[dict[str, Any]]) -> float | None:
    """Median seconds per optimiser step over the train rows' ``steps_per_s``.

    The median leaves out the windows that also held a validation or a checkpoint save.
    """
    rates = [row["steps_per_s"] for row in rows if row.get("steps_per_s", 0) > 0]
    return 1.0 / statistics.median(rates) if rates else None


def describe_device(device: str) -> str:
    """'NVIDIA H100 ...' or 'cpu (2 torch threads)': the device of this process, which trained
    the run unless it was moved between machines."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({torch.get_num_threads()} torch threads)"


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically, replacing an older one."""
    with atomic_output(path, force=True) as tmp:
        tmp.write_text(text)


def reproduce(config: SweepConfig, report_only: bool = False) -> Path:
    """Run the sweep (unless ``report_only``), then write the report; return its path."""
    from somtok import reproduce_report

    if report_only:
        # Report on the sweep as it was run, whatever the flags say: OUT's settings, or those
        # of the records beside the report when OUT is not on this machine.
        for saved in (config.out / SWEEP_FILE, config.records / SWEEP_FILE):
            if saved.is_file():
                config = dataclasses.replace(config, **training.read_json(saved))
                break
        check_records(config)
        for spec in plan(config.settings(), config.seeds):
            if run_state(config.out / spec.name, config.steps).status in ("finished", "failed"):
                save_record(config, spec)
    else:
        run_sweep(config)
    return reproduce_report.write_report(config)
