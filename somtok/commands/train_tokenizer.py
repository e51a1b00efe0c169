"""Train a KSOM (or baseline) VQ-VAE tokenizer with accelerate.

Writes runs/NAME/: accelerate state every --save-every steps (state/step_N), metrics.jsonl,
TensorBoard logs (tb/), plots/ and, at the end, the model in Hub layout (config.json,
model.safetensors, README.md): pass that folder as --tokenizer.

Several processes: `accelerate launch --num_processes P -m somtok train-tokenizer ...`; on a
machine without a GPU add --multi_gpu (accelerate starts several CPU processes only through
torchrun; they then train on the CPU). --batch-size is the global batch, split over the processes.

--resume continues the run in --run-dir / runs/NAME from its newest checkpoint: settings not
given on the command line are read back from the run; --steps may be raised.
"""

from __future__ import annotations

import argparse

# Names kept here so that `somtok --help` need not import torch; a test checks them against
# model.PRESETS, quantizer.QUANTIZERS and quantizer.INITS.
PRESET_NAMES = ("tiny", "cifar10", "large")
QUANTIZER_NAMES = ("ksom-hard", "ksom-gaussian", "ema", "vq", "gd-som")
INIT_NAMES = ("normal", "zeros", "uniform", "data")
MIXED_PRECISION = ("no", "bf16", "fp16")


def map_shape(text: str) -> tuple[int, ...]:
    """'32x16' -> (32, 16); '512' -> (512,) (a 1-D map)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (1, 2) or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a map shape; expected ROWSxCOLS (e.g. 32x16) or K for a 1-D map"
        )
    return shape


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Defaults are None so that --resume can tell given settings from saved ones; the
    # real defaults are TrainConfig's (shown in the help).
    what = parser.add_argument_group("data and model")
    what.add_argument("--data", help="'sample' (bundled, default), 'cifar10', a folder, parquet")
    what.add_argument(
        "--limit", type=int, dest="train_limit", metavar="N", help="use N training images"
    )
    what.add_argument("--preset", choices=PRESET_NAMES, help="model size (default cifar10)")
    what.add_argument("--quantizer", choices=QUANTIZER_NAMES, help="default ksom-hard")
    what.add_argument(
        "--map-shape", type=map_shape, metavar="RxS", help="32x16 (default) or 512 (1-D)"
    )
    what.add_argument("--toroidal", action="store_true", default=None, help="wrap the map")
    what.add_argument(
        "--init-cluster-size",
        type=float,
        metavar="N0",
        help="N0, the starting cluster sizes (default 1)",
    )
    what.add_argument("--codebook-init", choices=INIT_NAMES, help="default normal")

    how = parser.add_argument_group("optimisation")
    how.add_argument("--steps", type=int, metavar="N", help="optimiser steps in all (default 2000)")
    how.add_argument(
        "--batch-size", type=int, metavar="B", help="global batch per forward (default 128)"
    )
    how.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    how.add_argument("--mixed-precision", choices=MIXED_PRECISION, help="default no")
    how.add_argument(
        "--grad-accum", type=int, metavar="N", help="forward passes per step (default 1)"
    )
    how.add_argument("--seed", type=int, help="default 0")
    how.add_argument(
        "--deterministic", action="store_true", default=None, help="deterministic kernels"
    )

    run = parser.add_argument_group("run folder")
    run.add_argument("--run-dir", metavar="DIR", help="the run folder (default runs/NAME)")
    run.add_argument("--name", help="run name (default PRESET-QUANTIZER-MAP-seedSEED)")
    run.add_argument(
        "--save-every", type=int, metavar="N", help="save state every N steps (default 500)"
    )
    run.add_argument(
        "--eval-every", type=int, metavar="N", help="validate every N steps (default 500)"
    )
    run.add_argument(
        "--eval-limit",
        type=int,
        metavar="N",
        help="test images per validation (default 1000; 0: all)",
    )
    run.add_argument(
        "--log-every", type=int, metavar="N", help="metrics every N steps (default 10)"
    )
    run.add_argument(
        "--keep-last", type=int, metavar="N", help="checkpoints kept (default 3; 0: all)"
    )
    run.add_argument(
        "--plot-images", type=int, metavar="N", help="test images in the plots (default 16)"
    )
    run.add_argument("--resume", action="store_true", help="continue from the newest state")


def build_config(args: argparse.Namespace):
    """The TrainConfig the arguments ask for; with --resume, the saved run's filled in."""
    from somtok import training
    from somtok.tokenizer.train import TrainConfig

    return training.config_from_args(TrainConfig, args)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from somtok.tokenizer.train import train_tokenizer

    root = train_tokenizer(build_config(args))
    if PartialState().is_main_process:
        print(f"tokenizer saved in {root} (pass --tokenizer {root})")
    return 0
