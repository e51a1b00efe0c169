"""Re-run the paper's comparisons on CIFAR-10 and write a report (table, plots, claims).

Trains EMA-VQ and KSOM hard 2-D with N0 = 1 and N0 = 0 (--seeds seeds each), and KSOM Gaussian
2-D, KSOM hard 1-D, VQ with a learned codebook and GD-SOM (one seed each), one run folder
each in OUT. Run it again to continue: finished runs are skipped and an interrupted one resumes
from its last checkpoint. The report (OUT/RESULTS.md unless --doc) covers whatever runs have
finished and names the missing ones. The paper's full setting: --steps 30000 --batch-size 256.
"""

from __future__ import annotations

import argparse

from somtok.commands.train_tokenizer import PRESET_NAMES

# Kept here so that `somtok --help` need not import torch; a test checks it against
# somtok.reproduce.SETTING_NAMES.
SETTING_NAMES = (
    "ema-n0=1",
    "ksom-hard-n0=1",
    "ema-n0=0",
    "ksom-hard-n0=0",
    "ksom-gaussian",
    "ksom-hard-1d",
    "vq",
    "gd-som",
)


def settings_list(text: str) -> tuple[str, ...]:
    """'ema-n0=1,ksom-hard-n0=1' -> the names, each checked against SETTING_NAMES."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in SETTING_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{text!r} names unknown settings {unknown}; expected a comma-separated list of "
            f"{', '.join(SETTING_NAMES)}"
        )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sweep = parser.add_argument_group("the sweep")
    sweep.add_argument("--data", default="cifar10", help="training data (default cifar10)")
    sweep.add_argument("--preset", choices=PRESET_NAMES, default="cifar10", help="model size")
    sweep.add_argument("--steps", type=int, default=1500, help="steps per run (default 1500)")
    sweep.add_argument("--batch-size", type=int, default=128, help="default 128")
    sweep.add_argument(
        "--eval-every", type=int, default=250, help="validate every N steps (default 250)"
    )
    sweep.add_argument(
        "--eval-limit", type=int, default=2000, help="test images per validation (0: all)"
    )
    sweep.add_argument(
        "--seeds", type=int, default=3, help="seeds of the EMA-VQ / KSOM pairs (default 3)"
    )
    sweep.add_argument(
        "--only",
        type=settings_list,
        metavar="SETTING[,SETTING]",
        help=f"train and report only these settings: {', '.join(SETTING_NAMES)}",
    )

    out = parser.add_argument_group("output")
    out.add_argument("--out", default="runs/reproduce", help="the sweep folder")
    out.add_argument("--doc", help="the Markdown report (default OUT/RESULTS.md)")
    out.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing; rebuild the report from the finished runs, with OUT's own "
        "settings (the sweep flags above are then ignored, except --seeds and --only)",
    )


def run(args: argparse.Namespace) -> int:
    from somtok.reproduce import SweepConfig, reproduce

    config = SweepConfig(
        out=args.out,
        data=args.data,
        preset=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        eval_limit=args.eval_limit or None,
        seeds=args.seeds,
        only=args.only,
        doc=args.doc,
    )
    doc = reproduce(config, report_only=args.report_only)
    print(f"report written to {doc}")
    return 0
