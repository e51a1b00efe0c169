"""The main job in one command: serve the app with the shipped checkpoints.

Where checkpoints/tokenizer and checkpoints/prior are missing (or with --retrain), first train a
quick KSOM tokenizer and a quick prior on the bundled CIFAR-10 sample into --run-dir, then serve
those. A finished quick run is reused by the next call. --no-serve stops after training.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

# The quick models: a few minutes of training on 2 CPU cores, enough for a map that is
# visibly ordered and samples with some structure; see the README for better ones.
QUICK_TOKENIZER_STEPS = 400
QUICK_TOKENIZER_BATCH = 64
QUICK_PRIOR_STEPS = 300
QUICK_PRIOR_BATCH = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retrain", action="store_true", help="train quick models even if checkpoints exist"
    )
    parser.add_argument("--no-serve", action="store_true", help="stop after training")
    parser.add_argument(
        "--run-dir", default="runs/quickstart", help="where quick models go (runs/quickstart)"
    )
    parser.add_argument("--tokenizer-steps", type=int, default=QUICK_TOKENIZER_STEPS)
    parser.add_argument("--prior-steps", type=int, default=QUICK_PRIOR_STEPS)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (7860)")


def run(args: argparse.Namespace) -> int:
    from somtok import paths

    tokenizer, prior = paths.DEFAULT_TOKENIZER, paths.DEFAULT_PRIOR
    if args.retrain or not (_finished(tokenizer) and _finished(prior)):
        root = Path(args.run_dir)
        tokenizer = _quick_tokenizer(root / "tokenizer", args.tokenizer_steps, args.retrain)
        prior = _quick_prior(root / "prior", tokenizer, args.prior_steps, args.retrain)
    else:
        logger.info("using the shipped checkpoints in %s", paths.CHECKPOINTS)
    if args.no_serve:
        print(f"tokenizer: {tokenizer}\nprior: {prior}")
        return 0
    return _serve(tokenizer, prior, args.host, args.port)


def _finished(folder: Path) -> bool:
    """A folder holding an exported model (Hub layout), not only training state."""
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _fresh(folder: Path, retrain: bool) -> bool:
    """Whether to train into ``folder``: it holds no finished model, or --retrain asks."""
    if retrain and folder.exists():
        import shutil

        shutil.rmtree(folder)
    return not _finished(folder)


def _quick_tokenizer(folder: Path, steps: int, retrain: bool) -> Path:
    from somtok.tokenizer.train import TrainConfig, train_tokenizer

    return _quick(
        folder, retrain, "tokenizer", train_tokenizer, TrainConfig, steps, QUICK_TOKENIZER_BATCH
    )


def _quick_prior(folder: Path, tokenizer: Path, steps: int, retrain: bool) -> Path:
    from somtok.prior.train import PriorTrainConfig, train_prior

    return _quick(
        folder,
        retrain,
        "prior",
        train_prior,
        PriorTrainConfig,
        steps,
        QUICK_PRIOR_BATCH,
        tokenizer=str(tokenizer),
    )


def _quick(folder, retrain, what, train, config_class, steps, batch_size, **extra) -> Path:
    """Train ``what`` on the bundled sample into ``folder`` unless a finished one is there."""
    if _fresh(folder, retrain):
        logger.info("training a quick %s on the bundled sample into %s", what, folder)
        config = config_class(
            data="sample",
            steps=steps,
            batch_size=batch_size,
            eval_every=steps,
            save_every=steps,
            eval_limit=None,
            run_dir=str(folder),
            resume=(folder / "state").is_dir(),
            **extra,
        )
        train(config)
    return folder


def _serve(tokenizer: Path, prior: Path, host: str, port: int) -> int:
    from somtok.commands import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(
        ["--tokenizer", str(tokenizer), "--prior", str(prior), "--host", host, "--port", str(port)]
    )
    return serve.run(args)
