"""Hub-layout checkpoints as the tokenizer and the prior share them (DESIGN.md "Checkpoints").

A checkpoint is a folder, or a Hugging Face Hub repo, holding ``config.json``,
``model.safetensors`` and a model card ``README.md``. What lives here is the part both models
read alike: finding the files, and refusing what does not fit with one ``SomtokError`` that
names the checkpoint (``kind`` is "tokenizer" or "prior") and what was expected.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from somtok.errors import SomtokError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"

# How many names an error lists before it only counts them.
SHOWN_NAMES = 5


def looks_like_repo_id(text: str) -> bool:
    """``name`` or ``owner/name`` without path syntax: the shape of a Hub repo id."""
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text) is not None and not text.startswith(".")


def check_source(kind: str, source: str, expected: str) -> None:
    """Refuse ``source`` unless it is a folder with both files or has the shape of a repo id."""
    if os.path.isdir(source):
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not os.path.isfile(os.path.join(source, name)):
                raise SomtokError(f"{kind} folder {source!r} has no {name}; {expected}")
    elif not looks_like_repo_id(source):
        raise SomtokError(f"{kind} {source!r} is not a folder; {expected}")


@contextlib.contextmanager
def clear_errors(kind: str, source: str, expected: str) -> Iterator[None]:
    """Turn what reading ``source`` through huggingface_hub can raise into one SomtokError."""
    try:
        yield
    except json.JSONDecodeError as err:
        raise SomtokError(f"{kind} {source!r} has an unreadable {CONFIG_FILE}: {err}") from err
    except (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError) as err:
        raise SomtokError(
            f"{kind} {source!r} is neither a checkpoint folder nor a Hub model that can be "
            f"fetched ({type(err).__name__}); {expected}"
        ) from err


def resolve_file(kind: str, model_id: str, filename: str, **download) -> Path:
    """The path of ``filename`` in the folder ``model_id``, or downloaded from that Hub repo
    (``download``: hf_hub_download's revision, cache_dir, token, ...)."""
    if os.path.isdir(model_id):
        path = Path(model_id) / filename
        if not path.is_file():
            raise SomtokError(f"{kind} folder {model_id!r} has no {filename}")
        return path
    return Path(hf_hub_download(repo_id=model_id, filename=filename, **download))


def read_weights(kind: str, path: str | os.PathLike) -> dict[str, Tensor]:
    """A model.safetensors file as CPU tensors."""
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise SomtokError(f"cannot read {kind} weights {str(path)!r}: {err}") from err


def check_state(
    kind: str, state: Mapping[str, Tensor], expected: Mapping[str, Tensor], source: str
) -> None:
    """Refuse ``state`` unless it has exactly the names and shapes of ``expected``, all finite.

    Dtypes may differ (a float16 file loads into a float32 model).
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SomtokError(
            f"{kind} weights {source!r} do not match its {CONFIG_FILE}: missing "
            f"{missing[:SHOWN_NAMES]}, unexpected {unexpected[:SHOWN_NAMES]} ({len(missing)} "
            f"and {len(unexpected)} in all)"
        )
    misshapen = [name for name in sorted(state) if state[name].shape != expected[name].shape]
    if misshapen:
        name = misshapen[0]
        raise SomtokError(
            f"{kind} weights {source!r} do not match its {CONFIG_FILE}: {name} has shape "
            f"{tuple(state[name].shape)}, expected {tuple(expected[name].shape)} "
            f"({len(misshapen)} misshapen)"
        )
    bad = [n for n, t in sorted(state.items()) if t.is_floating_point() and not _finite(t)]
    if bad:
        raise SomtokError(
            f"{kind} weights {source!r} hold NaN or infinite values in {bad[:SHOWN_NAMES]}"
        )


def _finite(tensor: Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())
