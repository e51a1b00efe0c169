"""Where the shipped checkpoints and the bundled sample live."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = REPO_ROOT / "checkpoints"
DEFAULT_TOKENIZER = CHECKPOINTS / "tokenizer"
DEFAULT_PRIOR = CHECKPOINTS / "prior"
SAMPLE_DATA = REPO_ROOT / "data" / "cifar10-sample"
