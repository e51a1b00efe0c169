"""Token files: token grids on disk, with the tokenizer they belong to.

One format for ``somtok tokenize``, encoded datasets and prior samples (DESIGN.md "Contracts"):
a ``.safetensors`` file holding

    indices   int32 (B, h, w), values in [0, K)
    labels    int64 (B,), optional

and string metadata: ``format`` ("somtok-tokens/1"), ``tokenizer_id`` (16 hex digits),
``codebook_size`` (K), ``map_shape`` (JSON list), ``latent_shape`` (JSON [h, w]) and ``names``
(JSON list of B source names: labels for people, never used as output paths unchecked).

``save_tokens`` and ``load_tokens`` are the only writer and reader; both check everything.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from somtok import __version__
from somtok.errors import SomtokError
from somtok.fileio import atomic_output, check_writable

if TYPE_CHECKING:
    from somtok.tokenizer.model import SomTokenizer

FORMAT = "somtok-tokens/1"
SUFFIX = ".safetensors"  # what the commands name token files
REQUIRED_METADATA = ("format", "tokenizer_id", "codebook_size", "map_shape", "latent_shape")
TENSORS = ("indices", "labels")
INDEX_DTYPES = (torch.int32, torch.int64)
ID_PATTERN = re.compile(r"[0-9a-f]{16}")


@dataclass
class TokenFile:
    """Token grids and their provenance, checked on construction.

    indices: int64 (B, h, w) in [0, codebook_size). labels: int64 (B,) or None.
    names: B source names (empty strings where unknown).
    """

    indices: Tensor
    tokenizer_id: str
    codebook_size: int
    map_shape: tuple[int, ...]
    labels: Tensor | None = None
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        K = self.codebook_size
        if not isinstance(K, int) or isinstance(K, bool) or K < 1:
            raise SomtokError(f"codebook_size={K!r} is invalid; expected a positive integer")
        self.map_shape = _checked_map(self.map_shape, self.codebook_size)
        self.indices = _checked_indices(self.indices, self.codebook_size)
        B = self.indices.shape[0]
        self.names = [str(n) for n in self.names] if self.names else [""] * B
        if len(self.names) != B:
            raise SomtokError(f"{len(self.names)} names given for {B} token grids; expected {B}")
        if self.labels is not None:
            self.labels = _checked_labels(self.labels, B)
        if not isinstance(self.tokenizer_id, str) or not ID_PATTERN.fullmatch(self.tokenizer_id):
            raise SomtokError(
                f"tokenizer_id={self.tokenizer_id!r} is invalid; expected 16 lower-case hex digits"
            )

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(h, w) of every grid."""
        return tuple(self.indices.shape[1:])

    def __len__(self) -> int:
        return self.indices.shape[0]

    @classmethod
    def for_tokenizer(
        cls,
        tokenizer: SomTokenizer,
        indices: Tensor,
        labels: Tensor | None = None,
        names: list[str] | None = None,
    ) -> TokenFile:
        """Grids made by ``tokenizer`` (its id, K and map recorded with them)."""
        q = tokenizer.quantizer
        return cls(
            indices=indices,
            tokenizer_id=tokenizer.tokenizer_id,
            codebook_size=q.config.codebook_size,
            map_shape=q.grid.shape,
            labels=labels,
            names=list(names or []),
        )

    def check_tokenizer(self, tokenizer: SomTokenizer, source: str = "token file") -> None:
        """Raise SomtokError unless these grids were made by ``tokenizer``."""
        if self.tokenizer_id != tokenizer.tokenizer_id:
            raise SomtokError(
                f"{source} was made by tokenizer {self.tokenizer_id!r}, but the tokenizer given "
                f"is {tokenizer.tokenizer_id!r}; pass the tokenizer that made it (--tokenizer)"
            )
        # Same id, so what follows only catches an edited file.
        if self.codebook_size != tokenizer.codebook_size:
            raise SomtokError(
                f"{source} has codebook_size {self.codebook_size}; its tokenizer has "
                f"{tokenizer.codebook_size}"
            )
        if tuple(self.map_shape) != tuple(tokenizer.quantizer.grid.shape):
            raise SomtokError(
                f"{source} has map_shape {list(self.map_shape)}; its tokenizer's map is "
                f"{list(tokenizer.quantizer.grid.shape)}"
            )

    def metadata(self) -> dict[str, str]:
        """The safetensors metadata (all values strings)."""
        return {
            "format": FORMAT,
            "tokenizer_id": self.tokenizer_id,
            "codebook_size": str(self.codebook_size),
            "map_shape": json.dumps(list(self.map_shape)),
            "latent_shape": json.dumps(list(self.latent_shape)),
            "names": json.dumps(self.names, ensure_ascii=False),
            "somtok_version": __version__,
        }


def _checked_map(shape, K) -> tuple[int, ...]:
    shape = tuple(shape)
    ok = shape and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    if not ok or len(shape) > 2 or math.prod(shape) != K:
        raise SomtokError(
            f"map_shape={list(shape)} does not fit codebook_size={K}; expected 1 or 2 positive "
            f"sizes whose product is the codebook size"
        )
    return shape


def _checked_indices(indices, K: int) -> Tensor:
    """Integer (B, h, w) in [0, K) -> int64 on the CPU."""
    if not isinstance(indices, Tensor) or indices.dtype not in INDEX_DTYPES:
        what = getattr(indices, "dtype", type(indices).__name__)
        raise SomtokError(f"token indices of type {what} given; expected int32 or int64")
    if indices.ndim != 3 or 0 in indices.shape:
        raise SomtokError(
            f"token indices of shape {tuple(indices.shape)} given; expected (B, h, w) with B, h "
            "and w at least 1"
        )
    low, high = indices.aminmax()
    if low < 0 or high >= K:
        raise SomtokError(
            f"token indices in [{int(low)}, {int(high)}] given; expected 0 <= index < {K}"
        )
    return indices.detach().to("cpu", torch.int64)


def _checked_labels(labels, B: int) -> Tensor:
    if not isinstance(labels, Tensor) or labels.dtype not in INDEX_DTYPES or labels.shape != (B,):
        shape = tuple(getattr(labels, "shape", ()))
        raise SomtokError(
            f"labels of shape {shape} and type {getattr(labels, 'dtype', type(labels).__name__)} "
            f"given; expected int64 ({B},), one per token grid"
        )
    return labels.detach().to("cpu", torch.int64)


def check_token_output(path: str | os.PathLike, force: bool) -> Path:
    """Refuse a token-file output that is not named ``*.safetensors`` or that exists (without
    ``force``): what the commands check before they start the work."""
    path = check_writable(path, force)
    if path.suffix != SUFFIX:
        raise SomtokError(
            f"token file output {str(path)!r} given; expected a file name ending in {SUFFIX}"
        )
    return path


def save_tokens(path: str | os.PathLike, tokens: TokenFile, force: bool = False) -> Path:
    """Write ``tokens`` to ``path`` atomically; an existing file only with ``force``."""
    tensors = {"indices": tokens.indices.to(torch.int32).contiguous()}
    if tokens.labels is not None:
        tensors["labels"] = tokens.labels.contiguous()
    with atomic_output(path, force) as tmp:
        save_file(tensors, str(tmp), metadata=tokens.metadata())
    return Path(path)


def load_tokens(path: str | os.PathLike, tokenizer: SomTokenizer | None = None) -> TokenFile:
    """Read and check a token file; with ``tokenizer``, also check that it made the grids.

    Raises SomtokError naming the file for anything off: not a safetensors file, another format,
    missing or malformed metadata, wrong tensors, dtypes or shapes, indices out of range, a
    latent shape that disagrees with the grids, or grids of another tokenizer.
    """
    name = str(path)
    if not Path(path).is_file():
        raise SomtokError(f"token file {name!r} does not exist; expected a .safetensors file")
    try:
        with safe_open(name, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise SomtokError(f"token file {name!r} is not a readable safetensors file: {err}") from err
    try:
        tokens = _from_parts(meta, tensors)
    except SomtokError as err:
        raise SomtokError(f"token file {name!r}: {err}") from err
    if tokenizer is not None:
        tokens.check_tokenizer(tokenizer, f"token file {name!r}")
    return tokens


def _from_parts(meta: dict[str, str], tensors: dict[str, Tensor]) -> TokenFile:
    if meta.get("format") != FORMAT:
        raise SomtokError(
            f"format is {meta.get('format')!r}; expected a token file of format {FORMAT!r} "
            "(written by `somtok tokenize`)"
        )
    missing = [key for key in REQUIRED_METADATA if key not in meta]
    unexpected = sorted(set(tensors) - set(TENSORS))
    problems = [f"metadata lacks {missing}"] if missing else []
    if "indices" not in tensors:
        problems.append(f"no 'indices' tensor (tensors: {sorted(tensors)})")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if problems:
        raise SomtokError(
            f"incomplete: {'; '.join(problems)}; expected the metadata {list(REQUIRED_METADATA)} "
            "and the tensor 'indices', optionally 'labels'"
        )
    tokens = TokenFile(
        indices=tensors["indices"],
        tokenizer_id=meta["tokenizer_id"],
        codebook_size=_json(meta, "codebook_size", int),
        map_shape=_json(meta, "map_shape", list),
        labels=tensors.get("labels"),
        names=_json(meta, "names", list) if "names" in meta else [],
    )
    latent = _json(meta, "latent_shape", list)
    if list(tokens.latent_shape) != latent:
        raise SomtokError(
            f"metadata says latent_shape {latent} but the grids are {list(tokens.latent_shape)}"
        )
    return tokens


def _json(meta: dict[str, str], key: str, kind: type) -> Any:
    """A metadata value decoded from JSON, checked to be of ``kind``."""
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError as err:
        raise SomtokError(f"metadata {key!r} is not valid JSON: {meta[key][:80]!r}") from err
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SomtokError(f"metadata {key!r} is {value!r}; expected JSON of type {kind.__name__}")
    return value
