"""Every kind of data source, the decode cache and every source error."""

import os
import pickle

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from somtok import paths
from somtok.errors import SomtokError
from somtok.tokenizer import data

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]  # fmt: skip
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def decodes(fn, *args, **kwargs):
    """(result of fn, how many images it decoded)."""
    before = data.DECODE_COUNT
    result = fn(*args, **kwargs)
    return result, data.DECODE_COUNT - before


def pixel(image_set, i):
    """The top-left RGB pixel of image i."""
    return tuple(int(v) for v in image_set.images[i, :, 0, 0])


def write_parquet(path, colours, labels, class_names=("red", "blue")):
    """A Hub-layout parquet file (datasets.Image + ClassLabel) of solid 40 x 30 PNG images."""
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(class_names))}
    )
    rows = {"image": [Image.new("RGB", (40, 30), c) for c in colours], "label": labels}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


@pytest.fixture
def image_folder(tmp_path):
    """train/ and test/ with class folders, mixing PNG, JPEG, grey, RGBA and a corrupt file."""
    root = tmp_path / "photos"
    for sub in ["train/cat", "train/dog", "test/cat", "test/dog"]:
        (root / sub).mkdir(parents=True)
    Image.new("RGB", (64, 48), RED).save(root / "train/cat/a.png")
    Image.new("RGB", (32, 32), BLUE).save(root / "train/cat/b.jpg", quality=95)
    Image.new("L", (40, 40), 90).save(root / "train/dog/c.png")
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(root / "train/dog/d.png")
    (root / "train/dog/e.jpg").write_bytes(b"\xff\xd8\xff broken jpeg")
    Image.new("RGB", (32, 32), RED).save(root / "test/cat/f.png")
    Image.new("RGB", (32, 32), BLUE).save(root / "test/dog/g.png")
    return root


def test_bundled_sample_is_small_and_balanced(tmp_path):
    files = sorted(paths.SAMPLE_DATA.glob("*.parquet"))
    assert [f.name for f in files] == ["test.parquet", "train.parquet"]
    assert sum(f.stat().st_size for f in files) < 3 * 1024 * 1024
    assert (paths.SAMPLE_DATA / "README.md").is_file()

    for split, count in [("train", 2500), ("test", 500)]:
        sample = data.load_images("sample", split, cache_dir=tmp_path)
        assert isinstance(sample.images, np.memmap)
        assert sample.images.dtype == np.uint8 and sample.images.shape == (count, 3, 32, 32)
        assert sample.labels.dtype == np.int64
        assert np.bincount(sample.labels).tolist() == [count // 10] * 10
        assert sample.class_names == CIFAR_CLASSES and sample.skipped == 0
        assert sample.names[0] == f"{split}.parquet#0"
        assert 60 < sample.images.mean() < 180  # real photographs, not blank


def test_default_source_is_the_sample_in_the_session_cache(cache_dir):
    sample = data.load_images(limit=16)
    assert len(sample) == 16 and sample.source.endswith("train.parquet")
    assert str(sample.images.filename).startswith(str(cache_dir))


def test_parquet_file_with_hub_features(tmp_path):
    file = write_parquet(tmp_path / "x.parquet", [RED, BLUE, RED], [0, 1, 0])
    loaded = data.load_images(str(file), "train", size=16, cache_dir=tmp_path)
    assert loaded.images.shape == (3, 3, 16, 16)
    assert [pixel(loaded, i) for i in range(3)] == [RED, BLUE, RED]
    assert loaded.labels.tolist() == [0, 1, 0] and loaded.class_names == ["red", "blue"]
    assert loaded.names == ["x.parquet#0", "x.parquet#1", "x.parquet#2"]


def test_parquet_without_feature_metadata(tmp_path):
    blobs = []
    for colour in [RED, BLUE]:
        file = tmp_path / "one.png"
        Image.new("RGB", (32, 32), colour).save(file)
        blobs.append({"bytes": file.read_bytes(), "path": None})
    table = pa.table({"picture": blobs, "label": pa.array([3, 7], pa.int64())})
    pq.write_table(table, tmp_path / "plain.parquet")
    loaded = data.load_images(str(tmp_path / "plain.parquet"), cache_dir=tmp_path)
    assert [pixel(loaded, i) for i in range(2)] == [RED, BLUE]
    assert loaded.labels.tolist() == [3, 7] and loaded.class_names is None


def test_parquet_folder_and_glob_pick_the_split(tmp_path):
    folder = tmp_path / "hub" / "data"
    folder.mkdir(parents=True)
    write_parquet(folder / "train-00000-of-00002.parquet", [RED], [0])
    write_parquet(folder / "train-00001-of-00002.parquet", [BLUE], [1])
    write_parquet(folder / "test-00000-of-00001.parquet", [BLUE, BLUE], [1, 1])

    train = data.load_images(str(tmp_path / "hub"), "train", cache_dir=tmp_path)
    assert [pixel(train, i) for i in range(2)] == [RED, BLUE]
    test = data.load_images(str(folder / "*.parquet"), "test", cache_dir=tmp_path)
    assert len(test) == 2
    with pytest.raises(SomtokError, match=r"no 'validation' split; splits present: \['test', "):
        data.load_images(str(tmp_path / "hub"), "validation", cache_dir=tmp_path)


def test_image_folder_with_splits_and_classes(image_folder, tmp_path):
    train = data.load_images(str(image_folder), "train", cache_dir=tmp_path)
    assert train.names == ["cat/a.png", "cat/b.jpg", "dog/c.png", "dog/d.png"]
    assert train.skipped == 1
    assert train.class_names == ["cat", "dog"] and train.labels.tolist() == [0, 0, 1, 1]
    assert train.images.shape == (4, 3, 32, 32)
    assert pixel(train, 0) == RED  # 64 x 48 resized and cropped
    assert max(abs(a - b) for a, b in zip(pixel(train, 1), BLUE, strict=True)) <= 3
    assert pixel(train, 2) == (90, 90, 90)  # grey -> RGB
    assert pixel(train, 3) == WHITE  # transparent -> white

    test = data.load_images(str(image_folder), "test", cache_dir=tmp_path)
    assert test.labels.tolist() == [0, 1]
    with pytest.raises(SomtokError, match=r"no 'valid' split; splits present: \['test', 'train'\]"):
        data.load_images(str(image_folder), "valid", cache_dir=tmp_path)


def test_flat_folder_serves_any_split(image_folder, tmp_path):
    flat = image_folder / "train" / "cat"
    for split in ["train", "test"]:
        loaded = data.load_images(str(flat), split, cache_dir=tmp_path)
        assert loaded.names == ["a.png", "b.jpg"] and loaded.labels is None


def test_second_load_decodes_nothing_and_edits_decode_afresh(image_folder, tmp_path):
    first, count = decodes(data.load_images, str(image_folder), cache_dir=tmp_path)
    assert count == 5  # four images and the corrupt file
    again, count = decodes(data.load_images, str(image_folder), cache_dir=tmp_path)
    assert count == 0
    np.testing.assert_array_equal(again.images, first.images)
    assert again.skipped == 1 and again.labels.tolist() == first.labels.tolist()

    edited = image_folder / "train/cat/a.png"
    Image.new("RGB", (64, 48), BLUE).save(edited)
    os.utime(edited, ns=(0, edited.stat().st_mtime_ns + 10**9))
    changed, count = decodes(data.load_images, str(image_folder), cache_dir=tmp_path)
    assert count == 5 and pixel(changed, 0) == BLUE


def test_limit_and_size_key_the_cache(tmp_path):
    small, count = decodes(data.load_images, "sample", "test", 16, limit=10, cache_dir=tmp_path)
    assert small.images.shape == (10, 3, 16, 16) and count == 10
    _, count = decodes(data.load_images, "sample", "test", 16, limit=10, cache_dir=tmp_path)
    assert count == 0
    _, count = decodes(data.load_images, "sample", "test", 24, limit=10, cache_dir=tmp_path)
    assert count == 10


def test_interrupted_decode_leaves_no_cache(tmp_path):
    def rows():
        yield data.Row("ok", str(paths.SAMPLE_DATA / "missing.png"), None)
        raise KeyboardInterrupt

    broken = data.Source("broken", ["x"], 2, rows, None, False)
    with pytest.raises(KeyboardInterrupt):
        data._build_cache(broken, 32, None, tmp_path / "cache" / "key")
    assert list((tmp_path / "cache").iterdir()) == []


def test_damaged_cache_is_decoded_again(tmp_path):
    loaded = data.load_images("sample", "test", limit=8, cache_dir=tmp_path)
    cache_file = loaded.images.filename
    with open(cache_file, "r+b") as fh:
        fh.truncate(100)
    again, count = decodes(data.load_images, "sample", "test", limit=8, cache_dir=tmp_path)
    assert count == 8 and again.images.shape == (8, 3, 32, 32)


def test_torch_view(tmp_path):
    sample = data.load_images("sample", "test", limit=64, cache_dir=tmp_path)
    dataset = sample.as_torch()
    image, label = dataset[5]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert label == sample.labels[5]
    np.testing.assert_array_equal(image.numpy(), sample.images[5])

    revived = pickle.loads(pickle.dumps(dataset))  # what a DataLoader worker receives
    assert len(pickle.dumps(dataset)) < 10_000  # the file name, not the images
    assert torch.equal(revived[5][0], image)
    images, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=16)))
    assert images.shape == (16, 3, 32, 32) and labels.dtype == torch.int64


def test_cifar10_resolves_to_the_local_copy(cifar10_dir, cache_dir):
    test = data.load_images("cifar10", "test")
    assert test.images.shape == (10_000, 3, 32, 32)
    assert test.source == str(cifar10_dir / "test.parquet")
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert test.class_names == CIFAR_CLASSES


def test_cifar10_env_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("SOMTOK_CIFAR10_DIR", str(paths.SAMPLE_DATA))
    assert len(data.load_images("cifar10", "test", cache_dir=tmp_path)) == 500
    monkeypatch.setenv("SOMTOK_CIFAR10_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SomtokError, match="SOMTOK_CIFAR10_DIR=.*nowhere.*not a folder"):
        data.load_images("cifar10", cache_dir=tmp_path)


def test_source_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("hello")
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "numbers.parquet")
    cases = {
        str(tmp_path / "missing"): "does not exist; expected 'sample', 'cifar10'",
        "./missing-folder": "does not exist",
        str(tmp_path / "empty"): "holds no image files",
        str(tmp_path / "bad"): r"no readable image \(1 unreadable; first: .*x.png",
        str(tmp_path / "notes.txt"): "is not a parquet file",
        str(tmp_path / "numbers.parquet"): r"no image column among \['a'\]",
        str(tmp_path / "*.nothing"): "matched no parquet file",
        "no-such-owner/no-such-dataset": "could not be loaded from the Hugging Face Hub while "
        "offline",
    }
    for source, message in cases.items():
        with pytest.raises(SomtokError, match=message):
            data.load_images(source, cache_dir=tmp_path / "cache")
    # the failed decode of "bad" left nothing behind, not even its temporary folder
    assert list((tmp_path / "cache").glob("*")) == []


def test_cifar10_without_a_local_copy_offline_says_where_to_put_one(tmp_path, monkeypatch):
    monkeypatch.delenv("SOMTOK_CIFAR10_DIR", raising=False)
    monkeypatch.setattr(data, "SHARED_CIFAR10", tmp_path / "absent")
    with pytest.raises(
        SomtokError, match="while offline .* set SOMTOK_CIFAR10_DIR to the folder .*absent"
    ):
        data.load_images("cifar10", split="test", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(("size", "limit"), [(0, None), (32, 0), (32.5, None), (32, -1)])
def test_bad_size_or_limit(size, limit):
    with pytest.raises(SomtokError, match="must be a positive whole number"):
        data.load_images("sample", size=size, limit=limit)
