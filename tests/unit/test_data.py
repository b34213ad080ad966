"""pffbench.data: loaders, checksums, downloads and their one-line errors."""
import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings, strategies as st
from PIL import Image

from pffbench import data
from pffbench.datasets import load as loading
from pffbench.data import IDX_FILES, DataError, fetch, load_dataset

ROOT = Path(__file__).resolve().parents[2]
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def md5(blob: bytes) -> str:
    return hashlib.md5(blob).hexdigest()


# --- fake files -----------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def fake_idx_arrays(seed: int = 0, n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        IDX_FILES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        IDX_FILES[1]: rng.integers(0, 10, n_train).astype(np.uint8),
        IDX_FILES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        IDX_FILES[3]: rng.integers(0, 10, n_test).astype(np.uint8),
    }


def write_idx_set(folder: Path, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Write the four .gz files; return md5s as the loader expects them for MNIST
    (decompressed bytes) and Fashion-MNIST (.gz bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    sums = {"mnist": {}, "fashion-mnist": {}}
    for filename, array in arrays.items():
        raw = idx_bytes(array)
        packed = gzip.compress(raw, mtime=0)
        (folder / filename).write_bytes(packed)
        sums["mnist"][filename], sums["fashion-mnist"][filename] = md5(raw), md5(packed)
    return sums


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """A tiny MNIST in tmp_path/mnist whose md5s the loader accepts; no bundled fallback."""
    arrays = fake_idx_arrays()
    sums = write_idx_set(tmp_path / "mnist", arrays)
    monkeypatch.setitem(data.MD5, "mnist", sums["mnist"])
    monkeypatch.setitem(data.BUNDLED_DIRS, "mnist", tmp_path / "no-bundle")
    return tmp_path, arrays


def cifar_batch_bytes(rng: np.random.Generator, n: int = 3, protocol: int = 2) -> bytes:
    batch = {b"batch_label": b"fake", b"labels": rng.integers(0, 10, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
    return pickle.dumps(batch, protocol=protocol)


def fake_cifar_blobs(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {name: cifar_batch_bytes(rng, protocol=2 if i % 2 else pickle.HIGHEST_PROTOCOL)
            for i, name in enumerate(CIFAR_BATCHES)}


def write_cifar_tarball(path: Path, blobs: dict[str, bytes]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    path.write_bytes(buffer.getvalue())
    return md5(buffer.getvalue())


def write_cifar_folder(folder: Path, blobs: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)


def expected_cifar(blobs: dict[str, bytes]):
    batches = [pickle.loads(blobs[name], encoding="bytes") for name in CIFAR_BATCHES]
    x = [b[b"data"].astype(np.float32) / 255 for b in batches]
    y = [np.asarray(b[b"labels"]) for b in batches]
    return np.concatenate(x[:5]), np.concatenate(y[:5]), x[5], y[5]


def assert_well_formed(ds: data.Dataset) -> None:
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == torch.float32 and x.is_contiguous() and x.ndim == 2
        assert x.shape[1] == ds.num_features == int(np.prod(ds.image_shape))
        assert 0.0 <= x.min().item() and x.max().item() <= 1.0
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        assert 0 <= y.min().item() and y.max().item() < ds.num_classes


# --- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------

def test_idx_round_trip(fake_mnist):
    base, arrays = fake_mnist
    ds = load_dataset("mnist", base)
    assert_well_formed(ds)
    assert (ds.name, ds.num_classes, ds.image_shape, ds.num_features) == ("mnist", 10, (1, 28, 28), 784)
    expected = torch.from_numpy(arrays[IDX_FILES[0]].reshape(12, 784).astype(np.float32) / 255)
    torch.testing.assert_close(ds.x_train, expected, rtol=0, atol=0)
    assert ds.y_train.tolist() == arrays[IDX_FILES[1]].tolist()
    assert ds.x_test.shape == (5, 784) and ds.y_test.tolist() == arrays[IDX_FILES[3]].tolist()


def test_mnist_md5_is_of_decompressed_bytes_fashion_of_gz(tmp_path, monkeypatch):
    arrays = fake_idx_arrays()
    sums = write_idx_set(tmp_path / "mnist", arrays)
    write_idx_set(tmp_path / "fashion-mnist", arrays)
    monkeypatch.setitem(data.MD5, "mnist", sums["mnist"])
    monkeypatch.setitem(data.MD5, "fashion-mnist", sums["fashion-mnist"])
    # Same contents, new gzip wrapper (another mtime): fine for MNIST, not for Fashion-MNIST.
    for name in ("mnist", "fashion-mnist"):
        path = tmp_path / name / IDX_FILES[3]
        path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), mtime=12345))
    assert load_dataset("mnist", tmp_path).y_test.tolist() == arrays[IDX_FILES[3]].tolist()
    with pytest.raises(DataError, match=r"Fashion-MNIST file .*t10k-labels.*\(md5 [0-9a-f]{32}, expected"):
        load_dataset("fashion-mnist", tmp_path)


def corrupt(kind: str, arrays: dict[str, np.ndarray]) -> tuple[str, bytes, str]:
    """(file name, decompressed contents, expected message part) for one kind of damage."""
    images, labels = arrays[IDX_FILES[0]], arrays[IDX_FILES[1]]
    if kind == "magic":
        return IDX_FILES[0], struct.pack(">I", 2049) + idx_bytes(images)[4:], "magic number 2049, expected 2051"
    if kind == "size":
        return IDX_FILES[0], idx_bytes(images[:, :27, :]), "27x28, expected 28x28"
    if kind == "length":
        return IDX_FILES[0], idx_bytes(images) + b"\0", "header says"
    if kind == "short":
        return IDX_FILES[0], b"\0\0\x08\x03", "shorter than an IDX header"
    if kind == "label-range":
        return IDX_FILES[1], idx_bytes(np.where(labels == labels[0], 10, labels)), "label 10 out of range"
    assert kind == "count"
    return IDX_FILES[1], idx_bytes(labels[:-1]), "11 labels for 12 images"


@pytest.mark.parametrize("kind", ["magic", "size", "length", "short", "label-range", "count"])
def test_bad_idx_contents_are_one_line_errors(fake_mnist, monkeypatch, kind):
    base, arrays = fake_mnist
    filename, contents, needle = corrupt(kind, arrays)
    (base / "mnist" / filename).write_bytes(gzip.compress(contents))
    monkeypatch.setitem(data.MD5["mnist"], filename, md5(contents))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", base)
    message = str(info.value)
    assert needle in message and str(base / "mnist" / filename) in message
    assert "delete it" in message and "python -m pffbench.data fetch mnist" in message and "\n" not in message


def test_truncated_gzip(fake_mnist):
    base, _ = fake_mnist
    path = base / "mnist" / IDX_FILES[0]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"MNIST file .*train-images-idx3-ubyte.gz is bad \(not a complete gzip"):
        load_dataset("mnist", base)


def test_wrong_md5(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "mnist", fake_idx_arrays())  # real MNIST sums: these can't match
    monkeypatch.setitem(data.BUNDLED_DIRS, "mnist", tmp_path / "no-bundle")
    with pytest.raises(DataError, match=r"md5 of decompressed bytes [0-9a-f]{32}, expected 6bbc9ace898e"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("name,title", [("mnist", "MNIST"), ("fashion-mnist", "Fashion-MNIST")])
def test_missing_file_names_path_and_fetch_command(tmp_path, monkeypatch, name, title):
    monkeypatch.setitem(data.BUNDLED_DIRS, "mnist", tmp_path / "no-bundle")
    with pytest.raises(DataError) as info:
        load_dataset(name, tmp_path / "my data")
    message = str(info.value)
    path = tmp_path / "my data" / name / IDX_FILES[0]
    assert message.startswith(f"{title} file {path} not found: ")
    assert f"""run 'python -m pffbench.data fetch {name} --data-dir "{tmp_path / 'my data'}"'""" in message
    assert "--download" in message and "\n" not in message


def test_partial_data_dir_falls_back_to_complete_bundle(tmp_path, monkeypatch):
    arrays = fake_idx_arrays()
    sums = write_idx_set(tmp_path / "bundle", arrays)
    write_idx_set(tmp_path / "dd" / "mnist", {IDX_FILES[0]: arrays[IDX_FILES[0]]})
    monkeypatch.setitem(data.MD5, "mnist", sums["mnist"])
    monkeypatch.setitem(data.BUNDLED_DIRS, "mnist", tmp_path / "bundle")
    assert load_dataset("mnist", tmp_path / "dd").y_test.tolist() == arrays[IDX_FILES[3]].tolist()


def test_default_data_dir(monkeypatch):
    monkeypatch.setenv("PFFBENCH_DATA", "/some/where")
    assert data.default_data_dir() == "/some/where"
    monkeypatch.delenv("PFFBENCH_DATA")
    assert data.default_data_dir() == "data"


def test_unknown_name():
    with pytest.raises(DataError, match="unknown data set 'nope'"):
        load_dataset("nope")


# --- CIFAR-10 ---------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["tarball", "folder"])
def test_cifar_round_trip(tmp_path, monkeypatch, layout):
    blobs = fake_cifar_blobs()
    if layout == "tarball":
        monkeypatch.setitem(data.MD5, "cifar10", {data.CIFAR_TARBALL: write_cifar_tarball(
            tmp_path / data.CIFAR_TARBALL, blobs)})
    else:
        write_cifar_folder(tmp_path / data.CIFAR_FOLDER, blobs)
    ds = load_dataset("cifar10", tmp_path)
    assert_well_formed(ds)
    assert (ds.num_classes, ds.image_shape) == (10, (3, 32, 32))
    assert ds.x_train.shape == (15, 3072) and ds.x_test.shape == (3, 3072)
    x_train, y_train, x_test, y_test = expected_cifar(blobs)
    np.testing.assert_array_equal(ds.x_train.numpy(), x_train)  # rows stay channel-first
    np.testing.assert_array_equal(ds.y_train.numpy(), y_train)
    np.testing.assert_array_equal(ds.x_test.numpy(), x_test)
    np.testing.assert_array_equal(ds.y_test.numpy(), y_test)


def test_cifar_tarball_wrong_md5(tmp_path):
    write_cifar_tarball(tmp_path / data.CIFAR_TARBALL, fake_cifar_blobs())
    with pytest.raises(DataError, match=r"CIFAR-10 file .*cifar-10-python.tar.gz is bad \(md5 .*expected c58f3010"):
        load_dataset("cifar10", tmp_path)


def test_cifar_missing(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path)
    message = str(info.value)
    assert str(tmp_path / data.CIFAR_TARBALL) in message and "fetch cifar10" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


@pytest.mark.parametrize("batch,needle", [
    ({b"data": np.zeros((2, 3071), np.uint8), b"labels": [0, 1]}, "uint8 [N, 3072]"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8 [N, 3072]"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "shape (1,), expected (2,)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "out of range"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": None}, "not a list of integers"),
    ([1, 2], "no dict inside"),
])
def test_cifar_bad_batch(tmp_path, batch, needle):
    blobs = fake_cifar_blobs()
    blobs["data_batch_3"] = pickle.dumps(batch)
    write_cifar_folder(tmp_path / data.CIFAR_FOLDER, blobs)
    with pytest.raises(DataError, match=r"CIFAR-10 file .*data_batch_3 is bad") as info:
        load_dataset("cifar10", tmp_path)
    assert needle in str(info.value)


def test_cifar_batch_cannot_run_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    blobs = fake_cifar_blobs()
    blobs["test_batch"] = pickle.dumps({b"data": Payload()})
    write_cifar_folder(tmp_path / data.CIFAR_FOLDER, blobs)
    with pytest.raises(DataError, match="unexpected object"):
        load_dataset("cifar10", tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar_folder_missing_batch(tmp_path):
    blobs = fake_cifar_blobs()
    del blobs["data_batch_5"]
    write_cifar_folder(tmp_path / data.CIFAR_FOLDER, blobs)
    with pytest.raises(DataError, match=r"cannot read CIFAR-10 file .*data_batch_5"):
        load_dataset("cifar10", tmp_path)


# --- image folders ------------------------------------------------------------------

def write_images(root: Path, spec: dict[str, dict[str, list[np.ndarray]]], suffix: str = ".png") -> None:
    for split, classes in spec.items():
        for name, images in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i, pixels in enumerate(images):
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}{suffix}")


def test_imagefolder_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)  # noqa: E731 - H=3, W=4, RGB
    spec = {"train": {"zebra": [img(), img()], "ant": [img()]}, "test": {"ant": [img()], "zebra": [img()]}}
    write_images(tmp_path, spec)
    Image.fromarray(img()).save(tmp_path / "train" / "ant" / "extra.JPG")
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    ds = load_dataset("imagefolder", tmp_path)
    assert_well_formed(ds)
    assert (ds.num_classes, ds.image_shape, ds.x_train.shape) == (2, (3, 3, 4), (4, 36))
    assert ds.y_train.tolist() == [0, 0, 1, 1] and ds.y_test.tolist() == [0, 1]  # classes sorted: ant, zebra
    chw = lambda pixels: pixels.transpose(2, 0, 1).reshape(-1).astype(np.float32) / 255  # noqa: E731
    np.testing.assert_array_equal(ds.x_train[0].numpy(), chw(spec["train"]["ant"][0]))
    np.testing.assert_array_equal(ds.x_train[3].numpy(), chw(spec["train"]["zebra"][1]))
    np.testing.assert_array_equal(ds.x_test[1].numpy(), chw(spec["test"]["zebra"][0]))


def test_imagefolder_grayscale(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    write_images(tmp_path, {"train": {"a": [gray], "b": [gray]}, "test": {"a": [gray], "b": [gray]}})
    ds = load_dataset("imagefolder", tmp_path)
    assert ds.image_shape == (1, 4, 5)
    np.testing.assert_array_equal(ds.x_test[0].numpy(), gray.reshape(-1) / np.float32(255))


def test_imagefolder_mismatched_size_names_file(tmp_path):
    ok, odd = np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)
    write_images(tmp_path, {"train": {"a": [ok, ok], "b": [ok]}, "test": {"a": [ok, odd], "b": [ok]}})
    with pytest.raises(DataError, match=r"image .*test/a/001.png is 4x5 but .*train/a/000.png is 4x4"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_undecodable_file(tmp_path):
    ok = np.zeros((4, 4, 3), np.uint8)
    write_images(tmp_path, {"train": {"a": [ok], "b": [ok]}, "test": {"a": [ok], "b": [ok]}})
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"cannot decode image .*broken.png"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_structure_errors(tmp_path):
    with pytest.raises(DataError, match=r"image folder .*train not found"):
        load_dataset("imagefolder", tmp_path)
    ok = np.zeros((2, 2, 3), np.uint8)
    write_images(tmp_path, {"train": {"a": [ok], "b": [ok]}, "test": {"a": [ok]}})
    with pytest.raises(DataError, match=rf"image folder {tmp_path}/train/b has no test counterpart {tmp_path}/test/b"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_needs_two_classes(tmp_path):
    ok = np.zeros((2, 2, 3), np.uint8)
    write_images(tmp_path, {"train": {"cat": [ok]}, "test": {"cat": [ok]}})
    with pytest.raises(DataError, match=r"has 1 class subfolder\(s\), FF needs at least 2"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_hidden_entries_are_never_classes_or_images(tmp_path):
    """What a notebook, a desktop's trash, a NAS and macOS leave in a data set:
    hidden folders (holding images, in both splits) and hidden files (an
    AppleDouble ._ file that is no image, a dot-named valid image).  By hand:
    the classes are cat and dog only, in that order, and the rows are the
    visible images in sorted order (cat 000, cat 001, dog 000); the old
    loader made 5 classes, the hidden ones first (cat became label 3)."""
    rng = np.random.default_rng(1)
    img = lambda: rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)  # noqa: E731
    spec = {"train": {"cat": [img(), img()], "dog": [img()]}, "test": {"cat": [img()], "dog": [img()]}}
    write_images(tmp_path, spec)
    for split in ("train", "test"):
        write_images(tmp_path / split, {".ipynb_checkpoints": {"x": [img()]}})  # a class folder's copy, nested
        write_images(tmp_path, {split: {".snapshot": [img()], ".Trash-1000": [img()]}})  # images straight inside
        (tmp_path / split / "cat" / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not a PNG")
        Image.fromarray(img()).save(tmp_path / split / "dog" / ".preview.png")
    ds = load_dataset("imagefolder", tmp_path)
    assert ds.class_names == ("cat", "dog") and ds.num_classes == 2
    assert ds.y_train.tolist() == [0, 0, 1] and ds.y_test.tolist() == [0, 1]
    chw = lambda pixels: pixels.transpose(2, 0, 1).reshape(-1).astype(np.float32) / 255  # noqa: E731
    expected = [spec["train"]["cat"][0], spec["train"]["cat"][1], spec["train"]["dog"][0]]
    np.testing.assert_array_equal(ds.x_train.numpy(), np.stack([chw(p) for p in expected]))


def test_imagefolder_class_without_training_images_names_the_folder(tmp_path):
    """dog/ holds only a text file and a hidden image: no training images, so
    it would be a label FF never sees as a positive; refused, naming it."""
    ok = np.zeros((2, 2, 3), np.uint8)
    write_images(tmp_path, {"train": {"cat": [ok]}, "test": {"cat": [ok], "dog": [ok]}})
    (tmp_path / "train" / "dog").mkdir()
    (tmp_path / "train" / "dog" / "notes.txt").write_text("to do")
    Image.fromarray(ok).save(tmp_path / "train" / "dog" / ".000.png")
    with pytest.raises(DataError, match=rf"image folder {tmp_path}/train/dog has no \*.png/\*.jpg/\*.jpeg images"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_test_class_unknown_to_training_names_the_folder(tmp_path):
    ok = np.zeros((2, 2, 3), np.uint8)
    write_images(tmp_path, {"train": {"cat": [ok], "dog": [ok]}, "test": {"cat": [ok], "dog": [ok], "bird": [ok]}})
    with pytest.raises(DataError, match=rf"image folder {tmp_path}/test/bird is a class that {tmp_path}/train "
                                        r"does not have"):
        load_dataset("imagefolder", tmp_path)


def test_every_data_set_names_its_classes_in_label_order():
    assert load_dataset("synthetic").class_names == tuple(f"prototype {i}" for i in range(10))
    assert data.CLASS_NAMES["cifar10"][0] == "airplane" and data.CLASS_NAMES["cifar10"][9] == "truck"
    assert data.CLASS_NAMES["fashion-mnist"][9] == "Ankle boot" and data.CLASS_NAMES["mnist"][3] == "3"


def test_imagefolder_refuses_16_bit_pixels(tmp_path):
    # PIL's convert would clip every 16-bit value above 255: all-white images, silently
    deep = np.full((4, 4), 30000, np.uint16)
    write_images(tmp_path, {"train": {"a": [deep], "b": [deep]}, "test": {"a": [deep], "b": [deep]}})
    with pytest.raises(DataError, match=r"image .*000.png has I;16 pixels: .*8 bits per channel"):
        load_dataset("imagefolder", tmp_path)


def test_unreadable_files_are_one_data_error(monkeypatch, tmp_path):
    # as root the permission bits do not stop us, so the loader fails as an unreadable file would
    def denied(*args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz"))
    monkeypatch.setattr(loading, "_load_idx_dataset", denied)
    with pytest.raises(DataError, match=r"^mnist: cannot read .*train-images-idx3-ubyte.gz: Permission denied$"):
        load_dataset("mnist", tmp_path)


# --- synthetic ----------------------------------------------------------------------

def test_synthetic_is_deterministic_and_well_formed():
    a, b = load_dataset("synthetic"), load_dataset("synthetic", "/nonexistent")
    assert_well_formed(a)
    assert (a.x_train.shape, a.x_test.shape, a.num_classes, a.image_shape) == ((2000, 100), (500, 100), 10, (100,))
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert torch.all(a.x_train[:, :10] == 0) and torch.all(a.x_test[:, :10] == 0)
    assert a.y_train.bincount().tolist() == [200] * 10


def test_synthetic_is_learnable_but_not_by_one_feature():
    ds = load_dataset("synthetic")
    x, y, xt, yt = ds.x_train.numpy(), ds.y_train.numpy(), ds.x_test.numpy(), ds.y_test.numpy()
    centres = np.stack([x[y == c].mean(0) for c in range(10)])
    nearest_centre = ((xt[:, None, :] - centres) ** 2).sum(-1).argmin(1)
    assert (nearest_centre == yt).mean() > 0.95
    # Best one-feature rule: each value of each feature votes for the class most common there.
    best = 0.0
    for j in range(10, 100):
        bins = np.digitize(x[:, j], np.linspace(0, 1, 11)[1:-1])
        vote = np.array([np.bincount(y[bins == b], minlength=10).argmax() if (bins == b).any() else 0
                         for b in range(10)])
        best = max(best, (vote[np.digitize(xt[:, j], np.linspace(0, 1, 11)[1:-1])] == yt).mean())
    assert best < 0.35


# --- downloads --------------------------------------------------------------------

class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/short/"):  # the connection drops mid-file
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(folder served, its base URL) on 127.0.0.1."""
    monkeypatch.setenv("no_proxy", "*")
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def serve_fake_mnist(root: Path, monkeypatch) -> dict[str, np.ndarray]:
    arrays = fake_idx_arrays(seed=3)
    monkeypatch.setitem(data.MD5, "mnist", write_idx_set(root / "good", arrays)["mnist"])
    return arrays


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_tries_mirrors_in_order(tmp_path, server, monkeypatch):
    root, url = server
    arrays = serve_fake_mnist(root, monkeypatch)
    monkeypatch.setitem(data.MIRRORS, "mnist", [url + "missing/", url + "good/"])
    paths = fetch("mnist", tmp_path / "dd")
    assert paths == [str(tmp_path / "dd" / "mnist" / f) for f in IDX_FILES]
    assert leftovers(tmp_path / "dd" / "mnist") == sorted(IDX_FILES)  # no temp files
    monkeypatch.setitem(data.BUNDLED_DIRS, "mnist", tmp_path / "no-bundle")
    assert load_dataset("mnist", tmp_path / "dd").y_train.tolist() == arrays[IDX_FILES[1]].tolist()
    # Everything verified is kept: a second fetch needs no mirror.
    monkeypatch.setitem(data.MIRRORS, "mnist", [url + "missing/"])
    assert fetch("mnist", tmp_path / "dd") == paths


def test_load_with_download(tmp_path, server, monkeypatch):
    root, url = server
    arrays = serve_fake_mnist(root, monkeypatch)
    monkeypatch.setitem(data.MIRRORS, "mnist", [url + "good/"])
    monkeypatch.setitem(data.BUNDLED_DIRS, "mnist", tmp_path / "no-bundle")
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / IDX_FILES[2]).write_bytes(b"damaged")  # replaced by the download
    ds = load_dataset("mnist", tmp_path, download=True)
    assert ds.x_test.shape == (5, 784) and ds.y_test.tolist() == arrays[IDX_FILES[3]].tolist()


@pytest.mark.parametrize("mirror,needle", [
    ("bad/", "md5 of decompressed bytes"),
    ("short/", "connection dropped after 10 of 100000 bytes"),
    ("missing/", "404"),
])
def test_failed_download_leaves_no_file(tmp_path, server, monkeypatch, mirror, needle):
    root, url = server
    serve_fake_mnist(root, monkeypatch)
    write_idx_set(root / "bad", fake_idx_arrays(seed=4))
    monkeypatch.setitem(data.MIRRORS, "mnist", [url + mirror])
    with pytest.raises(DataError) as info:
        fetch("mnist", tmp_path)
    message = str(info.value)
    assert message.startswith(f"could not download MNIST file {tmp_path / 'mnist' / IDX_FILES[0]} ")
    assert needle in message and url + mirror + IDX_FILES[0] in message and "\n" not in message
    assert leftovers(tmp_path / "mnist") == []


def test_fetch_cifar_tarball(tmp_path, server, monkeypatch):
    root, url = server
    blobs = fake_cifar_blobs()
    tarball_md5 = write_cifar_tarball(root / data.CIFAR_TARBALL, blobs)
    monkeypatch.setitem(data.MD5, "cifar10", {data.CIFAR_TARBALL: tarball_md5})
    monkeypatch.setitem(data.MIRRORS, "cifar10", [url])
    ds = load_dataset("cifar10", tmp_path, download=True)
    assert ds.x_train.shape == (15, 3072) and (tmp_path / data.CIFAR_TARBALL).is_file()


def test_fetch_nothing_to_download():
    with pytest.raises(DataError, match="synthetic has nothing to download"):
        fetch("synthetic")


# --- command line -----------------------------------------------------------------

def test_cli_fetch_and_check(tmp_path, server, monkeypatch, capsys):
    root, url = server
    serve_fake_mnist(root, monkeypatch)
    monkeypatch.setitem(data.MIRRORS, "mnist", [url + "good/"])
    assert data.main(["fetch", "mnist", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"ok  {tmp_path / 'mnist' / f}" for f in IDX_FILES]
    assert data.main(["check", "mnist", "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert all(line.startswith("ok  ") and "md5 of decompressed bytes" in line for line in lines)
    (tmp_path / "mnist" / IDX_FILES[1]).write_bytes(b"")
    assert data.main(["check", "mnist", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train-labels-idx1-ubyte.gz is bad" in err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert data.main(["fetch", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pffbench.data: error: argument name: invalid choice"), err
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pffbench.data", "check", "cifar10", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("pffbench.data: error: CIFAR-10 not found")
    assert done.stderr.count("\n") == 1


# --- fuzz: random bytes give DataError, nothing else -------------------------------

@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def load_or_data_error(name: str, data_dir: Path) -> None:
    try:
        load_dataset(name, data_dir)
    except DataError as error:
        assert "\n" not in str(error)


@settings(max_examples=50, deadline=None)
@given(blob=st.binary(max_size=400), payload=st.binary(max_size=400),
       header=st.sampled_from([b"", struct.pack(">IIII", 2051, 12, 28, 28), struct.pack(">IIII", 2051, 0, 28, 28),
                               struct.pack(">II", 2049, 12), struct.pack(">IIII", 2051, 2**32 - 1, 28, 28)]))
def test_fuzz_idx(fuzz_dir, blob, payload, header):
    sums = write_idx_set(fuzz_dir / "mnist", fake_idx_arrays())
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(data.BUNDLED_DIRS, "mnist", fuzz_dir / "no-bundle")
        mp.setitem(data.MD5, "mnist", sums["mnist"])
        (fuzz_dir / "mnist" / IDX_FILES[0]).write_bytes(blob)  # random "gzip" file
        load_or_data_error("mnist", fuzz_dir)
        contents = header + payload  # valid gzip and md5, random IDX inside
        (fuzz_dir / "mnist" / IDX_FILES[0]).write_bytes(gzip.compress(contents))
        mp.setitem(data.MD5["mnist"], IDX_FILES[0], md5(contents))
        load_or_data_error("mnist", fuzz_dir)


@settings(max_examples=50, deadline=None)
@given(blob=st.binary(max_size=400),
       labels=st.one_of(st.none(), st.text(max_size=3), st.lists(st.integers(-2**70, 2**70), max_size=4)),
       rows=st.integers(0, 3), width=st.sampled_from([3072, 3071]), dtype=st.sampled_from([np.uint8, np.int16]))
@example(blob=b"P", labels=None, rows=0, width=3072, dtype=np.uint8)  # pickle's error message spans two lines
def test_fuzz_cifar_batch(fuzz_dir, blob, labels, rows, width, dtype):
    blobs = fake_cifar_blobs()
    blobs["data_batch_2"] = blob
    write_cifar_folder(fuzz_dir / "cifar" / data.CIFAR_FOLDER, blobs)
    load_or_data_error("cifar10", fuzz_dir / "cifar")
    blobs["data_batch_2"] = pickle.dumps({b"data": np.zeros((rows, width), dtype), b"labels": labels})
    write_cifar_folder(fuzz_dir / "cifar" / data.CIFAR_FOLDER, blobs)
    load_or_data_error("cifar10", fuzz_dir / "cifar")


# --- the real data ----------------------------------------------------------------

def assert_real_mnist(ds: data.Dataset) -> None:
    assert_well_formed(ds)
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.x_train.min().item() == 0.0 and ds.x_train.max().item() == 1.0
    assert ds.y_train.bincount().tolist() == MNIST_TRAIN_COUNTS
    assert ds.y_test.bincount().tolist() == MNIST_TEST_COUNTS


def test_real_mnist_from_env():
    base = os.environ.get("PFFBENCH_DATA")
    if not base or not all((Path(base) / "mnist" / f).is_file() for f in IDX_FILES):
        pytest.skip("set PFFBENCH_DATA to a folder holding mnist/")
    assert_real_mnist(load_dataset("mnist", base))


def test_bundled_mnist_is_found_from_an_empty_data_dir(tmp_path, monkeypatch):
    if not all((data.BUNDLED_DIRS["mnist"] / f).is_file() for f in IDX_FILES):
        pytest.skip("no bundled MNIST in this install")
    monkeypatch.chdir(tmp_path)
    assert_real_mnist(load_dataset("mnist", tmp_path))


# a JPEG copy of CIFAR-10 in image-folder layout, if $PFFBENCH_DATA holds one (no machine's path is assumed)
CIFAR_JPEG = Path(os.environ.get("PFFBENCH_DATA") or "data", "cifar10-jpeg")


@pytest.mark.skipif(not CIFAR_JPEG.is_dir(), reason="no $PFFBENCH_DATA/cifar10-jpeg (a JPEG copy of CIFAR-10)")
def test_real_imagefolder_cifar10_jpeg():
    ds = load_dataset("imagefolder", CIFAR_JPEG)
    assert_well_formed(ds)
    assert (ds.x_train.shape, ds.x_test.shape, ds.image_shape) == ((50000, 3072), (10000, 3072), (3, 32, 32))
    assert ds.y_train.bincount().tolist() == [5000] * 10 and ds.y_test.bincount().tolist() == [1000] * 10


def test_imagefolder_given_the_data_root_names_the_image_folders_inside(tmp_path):
    # PFFBENCH_DATA holds cifar10-jpeg/ (and mnist/): --data-dir of the root gets a pointer to the folder
    ok = np.zeros((2, 2, 3), np.uint8)
    write_images(tmp_path / "cifar10-jpeg", {"train": {"a": [ok], "b": [ok]}, "test": {"a": [ok], "b": [ok]}})
    (tmp_path / "mnist").mkdir()
    with pytest.raises(DataError, match=rf"not found \(did you mean --data-dir {tmp_path}/cifar10-jpeg\?\)"):
        load_dataset("imagefolder", tmp_path)


def test_data_flags_names_the_cifar10_a_folder_holds_for_scripts(tmp_path, capsys):
    # jobs/race.sbatch and tools/paper_gpu.sh ask this command which CIFAR-10 to read (each had its own python -c)
    (tmp_path / "cifar10-jpeg").mkdir()
    assert data.main(["flags", "cifar10", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split("\n") == ["--dataset", "imagefolder", "--data-dir",
                                                     str(tmp_path / "cifar10-jpeg"), ""]
    assert data.main(["flags", "cifar10", "--data-dir", str(tmp_path / "none")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"pffbench.data: error: no CIFAR-10 in {tmp_path}")
