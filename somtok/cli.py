"""The ``somtok`` command: one subcommand per pipeline stage.

Each subcommand lives in ``somtok/commands/<name>.py`` with two functions:
``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy libraries (torch,
gradio) inside ``run`` so that ``somtok --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from somtok import __version__
from somtok.errors import run_script

# name -> (module under somtok.commands, one-line help)
COMMANDS = {
    "train-tokenizer": ("train_tokenizer", "train a KSOM (or baseline) VQ-VAE tokenizer"),
    "evaluate": ("evaluate", "measure a tokenizer on a dataset: MSE, PSNR, usage, topology"),
    "tokenize": ("tokenize", "images, folders or globs -> one token file"),
    "detokenize": ("detokenize", "a token file -> PNG images"),
    "train-prior": ("train_prior", "train the autoregressive prior over token grids"),
    "sample": ("sample", "sample token grids from the prior and decode them"),
    "interpolate": ("interpolate", "walk from one image to another across the map"),
    "serve": ("serve", "start the Gradio app on 127.0.0.1"),
    "reproduce": ("reproduce", "re-run the paper's comparisons at CPU scale"),
    "quickstart": ("quickstart", "train quick models if none are shipped, then serve"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake on the command line is one line, like every other error."""

    def error(self, message: str):
        self.exit(2, f"somtok: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="somtok",
        description="An image tokenizer whose codebook is a Kohonen self-organising map.",
    )
    parser.add_argument("--version", action="version", version=f"somtok {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        mod = importlib.import_module(f"somtok.commands.{module}")
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip())
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return run_script(lambda: args._module.run(args))
    except KeyboardInterrupt:
        print("somtok: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
