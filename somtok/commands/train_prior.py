"""Train the autoregressive prior over a tokenizer's token grids, with accelerate.

First encodes the dataset's train and test splits with --tokenizer, once: the token files (with
the class labels) are cached by tokenizer id, source and split, and reused while the tokenizer is
the same. Then trains a GPT-2-style prior and writes runs/NAME/: accelerate state every
--save-every steps (state/step_N), metrics.jsonl (validation: bits per token on the test split),
TensorBoard logs (tb/), plots/samples.png (decoded samples of each class) and, at the end, the
prior in Hub layout (config.json, model.safetensors, README.md): pass that folder as --prior to
`somtok sample`.

--resume continues the run in --run-dir / runs/NAME from its newest checkpoint: settings not
given on the command line are read back from the run; --steps may be raised. The tokenizer must
be the one the run started with.
"""

from __future__ import annotations

import argparse

# Kept here so that `somtok --help` need not import torch; a test checks them against
# prior.model.PRESETS.
PRESET_NAMES = ("tiny", "small", "base")
MIXED_PRECISION = ("no", "bf16", "fp16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Defaults are None so that --resume can tell given settings from saved ones; the real
    # defaults are PriorTrainConfig's (shown in the help).
    what = parser.add_argument_group("data and model")
    what.add_argument("--tokenizer", help="tokenizer folder (default checkpoints/tokenizer)")
    what.add_argument("--data", help="'sample' (bundled, default), 'cifar10', a folder, parquet")
    what.add_argument("--limit", type=int, dest="train_limit", help="use N training images")
    what.add_argument("--preset", choices=PRESET_NAMES, help="model size (default small)")
    what.add_argument("--dropout", type=float, help="dropout inside the network (preset's)")
    what.add_argument(
        "--class-dropout", type=float, help="share of classes dropped to null (default 0.1)"
    )
    what.add_argument("--cache-dir", help="token file cache (default beside the image cache)")

    how = parser.add_argument_group("optimisation")
    how.add_argument("--steps", type=int, help="optimiser steps (default 2000)")
    how.add_argument("--batch-size", type=int, help="global batch of grids (default 64)")
    how.add_argument("--lr", type=float, help="AdamW peak learning rate (default 1e-3)")
    how.add_argument("--warmup", type=int, help="linear warm-up steps (default 100)")
    how.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.01)")
    how.add_argument("--mixed-precision", choices=MIXED_PRECISION, help="default no")
    how.add_argument("--seed", type=int, help="default 0")

    run = parser.add_argument_group("run folder")
    run.add_argument("--run-dir", help="the run folder (default runs/NAME)")
    run.add_argument("--name", help="run name (default prior-PRESET-seedSEED)")
    run.add_argument("--save-every", type=int, help="save state every N steps (default 500)")
    run.add_argument("--eval-every", type=int, help="validate every N steps (default 500)")
    run.add_argument(
        "--eval-limit", type=int, help="test grids per validation (default 1000; 0: all)"
    )
    run.add_argument("--log-every", type=int, help="metrics every N steps (default 10)")
    run.add_argument("--keep-last", type=int, help="checkpoints kept (default 3; 0: all)")
    run.add_argument(
        "--plot-images", type=int, help="samples drawn into plots/samples.png (16; 0: none)"
    )
    run.add_argument("--resume", action="store_true", help="continue from the newest state")


def build_config(args: argparse.Namespace):
    """The PriorTrainConfig the arguments ask for; with --resume, the saved run's filled in."""
    from somtok import training
    from somtok.prior.train import PriorTrainConfig

    return training.config_from_args(PriorTrainConfig, args)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from somtok.prior.train import train_prior

    root = train_prior(build_config(args))
    if PartialState().is_main_process:
        print(f"prior saved in {root} (pass --prior {root})")
    return 0
