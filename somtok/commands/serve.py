"""Start the somtok app (Gradio) on http://127.0.0.1:7860.

Tabs: Sample (from the prior), Interpolate (walk from one image to another across the map),
Map (codebook atlas, usage, U-matrix), Tokenize, Shift. The shipped checkpoints are used unless
--tokenizer / --prior name others; without a usable prior the Sample tab says why it is off.
The app listens on 127.0.0.1 only: pass --host 0.0.0.0 to let other machines in.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser):
    parser.add_argument(
        "--tokenizer", help="tokenizer checkpoint folder or Hub id (default: the shipped one)"
    )
    parser.add_argument(
        "--prior", help="prior checkpoint folder or Hub id (default: the shipped one)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument(
        "--dataset",
        default="sample",
        help="images for the examples and the usage map (default: the bundled sample)",
    )


def run(args) -> int:
    import os

    # No telemetry and no version check: the app must start without a network.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from somtok.errors import SomtokError
    from somtok.serve.app import SomtokApp, launch, load_models

    # Gradio's own HTTP calls to itself would log a line each.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not 0 < args.port < 65536:
        raise SomtokError(f"--port must be in 1..65535; got {args.port}")
    tokenizer, prior, note = load_models(args.tokenizer, args.prior)
    if note:
        logger.warning("sampling is off: %s", note)
    if args.host not in LOOPBACK:
        logger.warning(
            "listening on %s: anyone who can reach this machine can use the app", args.host
        )
    launch(SomtokApp(tokenizer, prior, note, dataset=args.dataset), args.host, args.port)
    return 0
