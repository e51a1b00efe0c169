"""Training and evaluation images from any source, decoded once into a memory-mapped cache.

``load_images(source, split, size)`` accepts, for ``source``:

- ``"sample"``: the CIFAR-10 sample bundled with the repository (``paths.SAMPLE_DATA``);
- ``"cifar10"``: the folder in ``$SOMTOK_CIFAR10_DIR``, else ``../shared/data/cifar10`` beside the
  repository, else the Hub dataset ``uoft-cs/cifar10``;
- a parquet file, a glob of parquet files, or a folder holding parquet files (the Hub layout).
  Files whose name starts with a split name (``train.parquet``, ``test-00000-of-00001.parquet``)
  or that lie in a folder named after one serve that split; without split names every file serves
  every split;
- a folder of images. With ``train/`` and ``test/`` subfolders each serves its split; a flat
  folder serves any split. Images sorted into class subfolders (``cat/``, ``dog/``) are labelled
  by folder, classes in name order;
- anything else: a Hugging Face Hub dataset id, read with ``datasets.load_dataset``.

Image and label columns are found by their ``datasets`` feature types. Every image becomes RGB
(``images.to_rgb``), resized and centre-cropped to ``size`` x ``size`` (``images.conform``) and is
written once to ``cache_dir/<key>/`` as raw uint8 (N, 3, H, W). The key hashes the source's files
(paths, sizes, modification times), the size and the limit, so later epochs and runs read the
memory map and decode nothing, while an edited source is decoded afresh. Unreadable images are
skipped, counted and the first few named in the log.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from somtok import paths
from somtok.errors import SomtokError
from somtok.tokenizer import images

logger = logging.getLogger(__name__)

CIFAR10_HUB_ID = "uoft-cs/cifar10"
SHARED_CIFAR10 = paths.REPO_ROOT.parent / "shared" / "data" / "cifar10"

# Names recognised as splits in file and folder names.
KNOWN_SPLITS = ("train", "test", "validation", "valid", "val")

# Integer columns taken as labels when no column is typed ClassLabel, in order of preference.
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target")

# Bump when the conversion changes (to_rgb, conform, the file layout): old caches then miss.
CACHE_FORMAT = 1
IMAGES_FILE = "images.u8"
LABELS_FILE = "labels.npy"
META_FILE = "meta.json"

BATCH_ROWS = 1024  # parquet rows read at a time
SKIPPED_SHOWN = 5  # unreadable images named in the log

# Images decoded by this process so far: a load served from the cache adds nothing.
DECODE_COUNT = 0


@dataclass
class ImageSet:
    """Decoded images of one split of one source.

    images: uint8 (N, 3, H, W) in [0, 255], a read-only memory map of the cache;
    labels: int64 (N,) or None; class_names: label -> name, or None;
    names: one per image (file path, or ``file#row`` for parquet rows);
    skipped: how many unreadable images were left out; source: where the images came from.
    """

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    names: list[str]
    skipped: int
    source: str

    def __len__(self) -> int:
        return len(self.images)

    def as_torch(self) -> ImageDataset:
        """A ``torch.utils.data.Dataset`` over these images (see ``ImageDataset``)."""
        return ImageDataset(self.images, self.labels)


class ImageDataset(torch.utils.data.Dataset):
    """Item i is (uint8 tensor (3, H, W), int label); the label is -1 for unlabelled images.

    A memory-mapped array pickles as its file name, so DataLoader workers reopen the map rather
    than receiving a copy of every image.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None):
        self._images = images
        self.labels = labels
        self.shape = images.shape
        self.file = images.filename if isinstance(images, np.memmap) else None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.images[index]))  # a copy: the map is read-only
        label = -1 if self.labels is None else int(self.labels[index])
        return image, label

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.memmap(self.file, dtype=np.uint8, mode="r", shape=self.shape)
        return self._images

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.file is not None:
            state["_images"] = None
        return state


class Row(NamedTuple):
    """One image of a source: its name, its encoded bytes or file path, its label (or None)."""

    name: str
    payload: bytes | str | None
    label: int | None


@dataclass
class Source:
    """A resolved source: what identifies its content, and how to read its rows."""

    description: str
    fingerprint: list  # JSON-serialisable: file paths, sizes, modification times
    count: int
    rows: Callable[[], Iterator[Row]]
    class_names: list[str] | None
    has_labels: bool


def load_images(
    source: str = "sample",
    split: str = "train",
    size: int = 32,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ImageSet:
    """Images of ``split`` of ``source`` as uint8 (N, 3, size, size), decoded once and cached.

    source: see the module docstring. limit: read only the first ``limit`` images of the split
    (unreadable ones among them are skipped, so fewer may come back). cache_dir: default
    ``$SOMTOK_CACHE_DIR``, else ``~/.cache/somtok/images``.
    """
    _check_positive("size", size)
    if limit is not None:
        _check_positive("limit", limit)
    found = resolve_source(source, split)
    folder = Path(cache_dir or default_cache_dir()) / _cache_key(found, size, limit)
    if not _cache_complete(folder):
        _build_cache(found, size, limit, folder)
    return _open_cache(folder)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SomtokError(f"{name} must be a positive whole number; got {value!r}")


def default_cache_dir() -> Path:
    """``$SOMTOK_CACHE_DIR``, else ``~/.cache/somtok/images``."""
    env = os.environ.get("SOMTOK_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "somtok" / "images"


def cifar10_dir() -> Path | None:
    """The local CIFAR-10 parquet folder (``$SOMTOK_CIFAR10_DIR`` or ``../shared``), or None."""
    env = os.environ.get("SOMTOK_CIFAR10_DIR")
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            raise SomtokError(
                f"SOMTOK_CIFAR10_DIR={env!r} is not a folder; expected the folder holding "
                f"CIFAR-10's train.parquet and test.parquet"
            )
        return folder
    return SHARED_CIFAR10 if SHARED_CIFAR10.is_dir() else None


# -- resolving a source ------------------------------------------------------------------------


_EXPECTED_SOURCE = (
    "expected 'sample', 'cifar10', a folder of images, parquet file(s) or a Hub dataset id"
)


def resolve_source(source: str, split: str) -> Source:
    """Find what ``source`` names and which of its files serve ``split``; reads no image."""
    if not split or not isinstance(split, str):
        raise SomtokError(f"split must be a split name such as 'train' or 'test'; got {split!r}")
    if source == "sample":
        if not paths.SAMPLE_DATA.is_dir():
            raise SomtokError(f"the bundled sample is missing from {str(paths.SAMPLE_DATA)!r}")
        return _local(paths.SAMPLE_DATA, split)
    if source == "cifar10":
        folder = cifar10_dir()
        if folder is None:
            # The Hub is the last resort: say where a local copy is looked for.
            local = (
                "no local copy was found either: set SOMTOK_CIFAR10_DIR to the folder holding "
                f"CIFAR-10's train.parquet and test.parquet (looked in {str(SHARED_CIFAR10)!r})"
            )
            return _hub(CIFAR10_HUB_ID, split, expected=local)
        return _local(folder, split)
    path = Path(source).expanduser()
    if path.exists():
        return _local(path, split)
    if glob.has_magic(source):
        return _parquet_glob(source, split)
    if _looks_like_hub_id(source):
        return _hub(source, split)
    raise SomtokError(f"source {source!r} does not exist; {_EXPECTED_SOURCE}")


def _looks_like_hub_id(source: str) -> bool:
    """``name`` or ``owner/name``, not ending like a file."""
    shaped = re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", source) is not None
    return shaped and not source.lower().endswith((".parquet", *images.IMAGE_EXTENSIONS))


def _local(path: Path, split: str) -> Source:
    if path.is_file():
        if path.suffix.lower() != ".parquet":
            raise SomtokError(f"source {str(path)!r} is not a parquet file; {_EXPECTED_SOURCE}")
        return _parquet([path])
    parquets = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    if parquets:
        return _parquet(_pick_split(parquets, path, split))
    return _folder(path, split)


def _parquet_glob(pattern: str, split: str) -> Source:
    files = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern), recursive=True))
    files = [f for f in files if f.suffix.lower() == ".parquet" and f.is_file()]
    if not files:
        raise SomtokError(f"source {pattern!r} matched no parquet file; {_EXPECTED_SOURCE}")
    root = Path(os.path.commonpath([f.parent for f in files]))
    return _parquet(_pick_split(files, root, split))


def _pick_split(files: list[Path], root: Path, split: str) -> list[Path]:
    """The files serving ``split``; all of them when none carries a split name."""
    tags = {f: _split_of(f, root) for f in files}
    present = sorted({t for t in tags.values() if t})
    if not present:
        return files
    chosen = [f for f in files if tags[f] == split]
    if not chosen:
        raise SomtokError(f"source {str(root)!r} has no {split!r} split; splits present: {present}")
    return chosen


def _split_of(file: Path, root: Path) -> str | None:
    """The split a file's name (``train-0000.parquet``) or folder (``test/``) names, if any."""
    candidates = [re.split(r"[-_.]", file.stem)[0], *file.relative_to(root).parent.parts]
    return next((c for c in candidates if c in KNOWN_SPLITS), None)


def _stat(files: list[Path], root: Path | None = None) -> list:
    """[name, bytes, modification time in ns] per file: the content key of a source."""
    out = []
    for f in files:
        st = f.stat()
        name = str(f.relative_to(root)) if root else str(f.resolve())
        out.append([name, st.st_size, st.st_mtime_ns])
    return out


# -- parquet files and Hub datasets ---------------------------------------------------------


def _parquet(files: list[Path]) -> Source:
    import datasets  # heavy; only sources with parquet or Hub data need it

    description = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"

    schemas = [pq.read_schema(f) for f in files]
    features = datasets.Features.from_arrow_schema(schemas[0])
    image_col, label_col, class_names = _columns(features, description)
    for f, schema in zip(files, schemas, strict=True):
        if image_col not in schema.names:
            raise SomtokError(f"parquet file {str(f)!r} has no column {image_col!r}")
    columns = [c for c in (image_col, label_col) if c]

    def rows() -> Iterator[Row]:
        for f in files:
            offset = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=columns):
                yield from _batch_rows(batch, image_col, label_col, f"{f.name}#", offset, f.parent)
                offset += batch.num_rows

    return Source(
        description=description,
        fingerprint=_stat(files),
        count=sum(pq.ParquetFile(f).metadata.num_rows for f in files),
        rows=rows,
        class_names=class_names,
        has_labels=label_col is not None,
    )


def _columns(features, where: str) -> tuple[str, str | None, list[str] | None]:
    """(image column, label column or None, class names or None) from ``datasets`` features."""
    import datasets

    image_col = next((n for n, f in features.items() if isinstance(f, datasets.Image)), None)
    if image_col is None:  # no feature metadata: a struct of encoded bytes, or raw bytes
        image_col = next((n for n, f in features.items() if _encoded_image(n, f)), None)
    if image_col is None:
        raise SomtokError(
            f"{where}: no image column among {list(features)}; expected a column of "
            f"datasets.Image type, or a struct with 'bytes' and 'path'"
        )
    classes = [n for n, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if classes:
        label_col = "label" if "label" in classes else classes[0]
        return image_col, label_col, list(features[label_col].names)
    integer = [n for n in LABEL_COLUMNS if n in features and _is_integer(features[n])]
    return image_col, (integer[0] if integer else None), None


def _encoded_image(name: str, feature) -> bool:
    if isinstance(feature, dict):
        return "bytes" in feature
    return name in ("image", "img") and getattr(feature, "dtype", None) in (
        "binary",
        "large_binary",
    )


def _is_integer(feature) -> bool:
    return getattr(feature, "dtype", "").startswith(("int", "uint"))


def _batch_rows(
    batch, image_col: str, label_col: str | None, prefix: str, offset: int, base: Path | None
) -> Iterator[Row]:
    """Rows of an arrow batch; a row holding only a path is read from that file."""
    column = batch.column(image_col)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    count = len(column)
    if pa.types.is_struct(column.type):
        data = column.field("bytes").to_pylist()
        has_path = column.type.get_field_index("path") >= 0
        files = column.field("path").to_pylist() if has_path else [None] * count
    else:
        data, files = column.to_pylist(), [None] * count
    labels = batch.column(label_col).to_pylist() if label_col else [None] * count
    for i, (blob, file, label) in enumerate(zip(data, files, labels, strict=True)):
        if blob is None and file is not None:
            blob = str(base / file if base else Path(file))
        yield Row(f"{prefix}{offset + i}", blob, label)


def _hub(repo_id: str, split: str, expected: str = _EXPECTED_SOURCE) -> Source:
    import datasets
    import huggingface_hub

    try:
        loaded = datasets.load_dataset(repo_id)
    except Exception as err:  # offline, unknown id, no access: all mean "cannot use this source"
        offline = huggingface_hub.constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE
        why = " while offline (HF_HUB_OFFLINE is set)" if offline else ""
        raise SomtokError(
            f"source {repo_id!r} is not a local path and could not be loaded from the Hugging "
            f"Face Hub{why} ({type(err).__name__}: {err}); {expected}"
        ) from err
    if split not in loaded:
        raise SomtokError(
            f"Hub dataset {repo_id!r} has no {split!r} split; splits present: {sorted(loaded)}"
        )
    dataset = loaded[split]
    image_col, label_col, class_names = _columns(dataset.features, f"Hub dataset {repo_id!r}")
    dataset = dataset.select_columns([c for c in (image_col, label_col) if c])
    cache_files = [Path(f["filename"]) for f in dataset.cache_files]

    def rows() -> Iterator[Row]:
        offset = 0
        for batch in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS):
            yield from _batch_rows(batch, image_col, label_col, f"{split}#", offset, None)
            offset += batch.num_rows

    return Source(
        description=f"hub:{repo_id}/{split}",
        fingerprint=[repo_id, split, _stat(cache_files) or dataset._fingerprint],
        count=len(dataset),
        rows=rows,
        class_names=class_names,
        has_labels=label_col is not None,
    )


# -- folders of image files ------------------------------------------------------------------


def _folder(root: Path, split: str) -> Source:
    present = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name in KNOWN_SPLITS)
    if present:
        if split not in present:
            raise SomtokError(
                f"folder {str(root)!r} has no {split!r} split; splits present: {present}"
            )
        root = root / split
    files = [f for f in sorted(root.rglob("*")) if _visible_image(f, root)]
    if not files:
        raise SomtokError(
            f"folder {str(root)!r} holds no image files; expected files ending in "
            f"{', '.join(images.IMAGE_EXTENSIONS)}, or parquet files"
        )
    relative = [f.relative_to(root) for f in files]
    class_names = _class_folders(relative)
    labels = [class_names.index(r.parts[0]) for r in relative] if class_names else None

    def rows() -> Iterator[Row]:
        for i, (f, r) in enumerate(zip(files, relative, strict=True)):
            yield Row(str(r), str(f), labels[i] if labels else None)

    return Source(
        description=str(root),
        fingerprint=[str(root.resolve()), _stat(files, root)],
        count=len(files),
        rows=rows,
        class_names=class_names,
        has_labels=class_names is not None,
    )


def _visible_image(file: Path, root: Path) -> bool:
    hidden = any(part.startswith(".") for part in file.relative_to(root).parts)
    return not hidden and images.is_image_file(file) and file.is_file()


def _class_folders(relative: list[Path]) -> list[str] | None:
    """Class names when every image lies one folder deep and there are two folders or more."""
    if any(len(r.parts) != 2 for r in relative):
        return None
    names = sorted({r.parts[0] for r in relative})
    return names if len(names) > 1 else None


# -- the cache -------------------------------------------------------------------------------


def _cache_key(found: Source, size: int, limit: int | None) -> str:
    material = {"format": CACHE_FORMAT, "content": found.fingerprint, "size": size, "limit": limit}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:24]


def _cache_complete(folder: Path) -> bool:
    """True when ``folder`` holds a whole cache; a damaged one is removed."""
    if not (folder / META_FILE).is_file() or not (folder / IMAGES_FILE).is_file():
        return False
    shape = json.loads((folder / META_FILE).read_text())["shape"]
    if (folder / IMAGES_FILE).stat().st_size == int(np.prod(shape)):
        return True
    logger.warning("image cache %s is damaged; decoding again", folder)
    shutil.rmtree(folder)
    return False


def _build_cache(found: Source, size: int, limit: int | None, folder: Path) -> None:
    """Decode into a temporary folder beside ``folder`` and rename it into place when complete,
    so an interrupted decode leaves no cache that looks whole."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        _decode_into(tmp, found, size, limit)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _cache_complete(folder):  # not another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _decode_into(tmp: Path, found: Source, size: int, limit: int | None) -> None:
    """Decode every row of ``found`` into ``tmp``: images, labels and meta files."""
    start = time.perf_counter()
    total = min(found.count, limit or found.count)
    names, labels, skipped = [], [], []
    with open(tmp / IMAGES_FILE, "wb") as out:
        rows = itertools.islice(found.rows(), limit)
        for row in tqdm(rows, total=total, desc="decoding images", unit="img", disable=None):
            try:
                out.write(_decode(row, size).tobytes())
            except SomtokError as err:
                skipped.append(str(err))
                continue
            names.append(row.name)
            labels.append(-1 if row.label is None else row.label)
    _report(found, len(names), skipped, time.perf_counter() - start)
    if found.has_labels:
        np.save(tmp / LABELS_FILE, np.asarray(labels, dtype=np.int64))
    meta = {
        "format": CACHE_FORMAT,
        "source": found.description,
        "shape": [len(names), 3, size, size],
        "class_names": found.class_names,
        "names": names,
        "skipped": len(skipped),
    }
    (tmp / META_FILE).write_text(json.dumps(meta))


def _decode(row: Row, size: int) -> np.ndarray:
    """One row -> uint8 (3, size, size); SomtokError if it cannot be read."""
    global DECODE_COUNT
    DECODE_COUNT += 1
    if isinstance(row.payload, bytes):
        img = images.read_image_bytes(row.payload, row.name, draft=size)
    elif isinstance(row.payload, str):
        img = images.read_image(row.payload, draft=size)
    else:
        raise SomtokError(f"image {row.name!r} holds neither bytes nor a file path")
    return images.to_array(images.conform(img, size))


def _report(found: Source, decoded: int, skipped: list[str], seconds: float) -> None:
    if skipped:
        logger.warning(
            "%s: skipped %d unreadable images; first: %s",
            found.description,
            len(skipped),
            " | ".join(skipped[:SKIPPED_SHOWN]),
        )
    if decoded == 0:
        first = f"; first: {skipped[0]}" if skipped else ""
        raise SomtokError(
            f"source {found.description!r} has no readable image ({len(skipped)} unreadable"
            f"{first}); expected images in PNG, JPEG or another format Pillow reads"
        )
    logger.info("%s: decoded %d images in %.1f s", found.description, decoded, seconds)


def _open_cache(folder: Path) -> ImageSet:
    meta = json.loads((folder / META_FILE).read_text())
    shape = tuple(meta["shape"])
    labels_file = folder / LABELS_FILE
    return ImageSet(
        images=np.memmap(folder / IMAGES_FILE, dtype=np.uint8, mode="r", shape=shape),
        labels=np.load(labels_file) if labels_file.is_file() else None,
        class_names=meta["class_names"],
        names=meta["names"],
        skipped=meta["skipped"],
        source=meta["source"],
    )
