"""Data sets for the benchmark, as whole float32 tensors in [0, 1].

Every file is checked on every load (md5 where its publisher gives one, and
always its structure), so a run never trains on a damaged or different copy.
Problems surface as one-line ``DataError`` messages that say how to fix them.

Command line::

    python -m pffbench.data fetch mnist [--data-dir DIR]   # download + verify
    python -m pffbench.data check mnist [--data-dir DIR]   # verify what is there
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import re
import shlex
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # PIL is imported where images are decoded: most runs never need it
    from PIL import Image

DATASETS = ("mnist", "fashion-mnist", "cifar10", "imagefolder", "synthetic")

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR_TARBALL = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")

# MNIST's sums are of the decompressed files: they are the canonical ones, and
# they hold for every mirror and for re-compressed copies (like the bundled one).
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {CIFAR_TARBALL: "c58f30108f718f92721af3b95e74349a"},
}
_MD5_OF_DECOMPRESSED = {"mnist"}

# Base URLs, tried in order; a file's URL is base + file name.
MIRRORS: dict[str, list[str]] = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                      "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
}

# Copies shipped in the repository, so the default run works offline from any cwd.
BUNDLED_DIRS: dict[str, Path] = {"mnist": Path(__file__).resolve().parent.parent / "data" / "mnist"}

_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
_DOWNLOAD_TIMEOUT_S = 60
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(Exception):
    """A missing or bad data file; the message is one line naming the file and the fix."""

    def __init__(self, message: str):
        # causes quoted from libraries may span lines (pickle's UnpicklingError does)
        super().__init__(re.sub(r"\s*[\r\n]+\s*", " ", message))


class _BadFile(Exception):
    """Why a file's contents are unusable; callers add which file and the fix."""


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # [N, D] float32 in [0, 1]
    y_train: torch.Tensor  # [N] int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    image_shape: tuple  # (C, H, W) of images, (D,) for vectors

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]


def default_data_dir() -> str:
    return os.environ.get("PFFBENCH_DATA") or "data"


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """Load a data set; with ``download``, missing files are fetched first.

    ``imagefolder`` reads ``<data_dir>/{train,test}/<class>/*.png|jpg|jpeg``.
    """
    data_dir = default_data_dir() if data_dir is None else os.fspath(data_dir)
    loaders = {"mnist": lambda: _load_idx_dataset(name, data_dir, download),
               "fashion-mnist": lambda: _load_idx_dataset(name, data_dir, download),
               "cifar10": lambda: _load_cifar10(data_dir, download),
               "imagefolder": lambda: _load_imagefolder(Path(data_dir)),
               "synthetic": _synthetic}
    if name not in loaders:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    try:
        return loaders[name]()
    except OSError as error:  # a file or folder this process may not read, a failing disk, ...
        raise DataError(f"{name}: cannot read {error.filename or data_dir}: {error.strerror or error}") from None


def fetch(name: str, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Download whatever of ``name``'s files is missing or bad; return all their paths."""
    data_dir = default_data_dir() if data_dir is None else os.fspath(data_dir)
    if name not in MD5:
        raise DataError(f"{name} has nothing to download: " + (
            "it is generated" if name == "synthetic" else "put images in <dir>/{train,test}/<class>/"))
    paths = []
    for path in _download_paths(name, data_dir):
        try:
            _verified_contents(path.read_bytes(), name, path.name)
        except (OSError, _BadFile):
            _download(name, path, data_dir)
        paths.append(str(path))
    return paths


# --- files, checksums, downloads ---------------------------------------------

def _download_paths(name: str, data_dir: str) -> list[Path]:
    if name == "cifar10":
        return [Path(data_dir, CIFAR_TARBALL)]
    return [Path(data_dir, name, filename) for filename in IDX_FILES]


def _fetch_hint(name: str, data_dir: str) -> str:
    # Double quotes: the command itself sits in single quotes.
    shown = data_dir if shlex.quote(data_dir) == data_dir else f'"{data_dir}"'
    return f"run 'python -m pffbench.data fetch {name} --data-dir {shown}'"


def _bad_file(name: str, path: Path | str, data_dir: str, reason: str) -> DataError:
    return DataError(f"{_TITLES[name]} file {path} is bad ({reason}): delete it and {_fetch_hint(name, data_dir)}")


def _verified_contents(raw: bytes, name: str, filename: str) -> bytes:
    """The file's contents, decompressed if gzip, once its md5 matches."""
    try:
        data = gzip.decompress(raw) if filename.endswith(".gz") else raw
    except (EOFError, OSError, zlib.error) as error:
        raise _BadFile(f"not a complete gzip file: {error}") from None
    of_decompressed = name in _MD5_OF_DECOMPRESSED
    digest = hashlib.md5(data if of_decompressed else raw, usedforsecurity=False).hexdigest()
    expected = MD5[name][filename]
    if digest != expected:
        raise _BadFile(f"md5{' of decompressed bytes' if of_decompressed else ''} {digest}, expected {expected}")
    return data


def _read_verified(name: str, path: Path, data_dir: str) -> bytes:
    try:
        return _verified_contents(path.read_bytes(), name, path.name)
    except OSError as error:
        raise DataError(f"cannot read {_TITLES[name]} file {path}: {error.strerror or error}") from None
    except _BadFile as error:
        raise _bad_file(name, path, data_dir, str(error)) from None


def _download(name: str, dest: Path, data_dir: str) -> None:
    """Try each mirror in turn.  The file appears under its final name only
    complete and verified (temp file + fsync + atomic rename), so neither a
    killed download nor a bad mirror leaves a file that looks valid."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create folder {dest.parent}: {error.strerror or error}") from None
    failures = []
    for base in MIRRORS[name]:
        url = base + dest.name
        tmp = None
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, \
                    tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part",
                                                delete=False) as out:
                tmp = Path(out.name)
                size, expected = 0, response.headers.get("Content-Length")
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    size += len(chunk)
                if expected is not None and size != int(expected):  # read() ends quietly on a dropped connection
                    raise _BadFile(f"connection dropped after {size} of {expected} bytes")
                out.flush()
                os.fsync(out.fileno())
            _verified_contents(tmp.read_bytes(), name, dest.name)
            os.replace(tmp, dest)
            return
        except (OSError, http.client.HTTPException, ValueError, _BadFile) as error:
            failures.append(f"{url}: {' '.join(str(error).split())}")
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {_TITLES[name]} file {dest} ({'; '.join(failures)}): "
                    f"download it by hand from one of those URLs and put it there")


# --- MNIST and Fashion-MNIST (IDX) ---------------------------------------------

def _load_idx_dataset(name: str, data_dir: str, download: bool) -> Dataset:
    folder = _idx_folder(name, data_dir, download)
    arrays = []
    for filename in IDX_FILES:
        path = folder / filename
        try:
            arrays.append(_parse_idx(_read_verified(name, path, data_dir), images="images" in filename))
        except _BadFile as error:
            raise _bad_file(name, path, data_dir, str(error)) from None
    train_images, train_labels, test_images, test_labels = arrays
    for images, labels, filename in ((train_images, train_labels, IDX_FILES[1]),
                                     (test_images, test_labels, IDX_FILES[3])):
        if len(labels) != len(images):
            raise _bad_file(name, folder / filename, data_dir,
                            f"{len(labels)} labels for {len(images)} images")
    return Dataset(name, _to_unit_float(train_images), torch.from_numpy(train_labels.astype(np.int64)),
                   _to_unit_float(test_images), torch.from_numpy(test_labels.astype(np.int64)),
                   num_classes=10, image_shape=(1, 28, 28))


def _idx_folder(name: str, data_dir: str, download: bool) -> Path:
    """The first folder that holds all four files: the data dir's, else the bundled copy."""
    primary = Path(data_dir, name)
    for folder in (primary, BUNDLED_DIRS.get(name)):
        if folder is not None and all((folder / filename).is_file() for filename in IDX_FILES):
            return folder
    if download:
        fetch(name, data_dir)
        return primary
    missing = next(primary / filename for filename in IDX_FILES if not (primary / filename).is_file())
    raise DataError(f"{_TITLES[name]} file {missing} not found: {_fetch_hint(name, data_dir)} "
                    f"(or pass --download), or copy the four files there")


def _parse_idx(data: bytes, images: bool) -> np.ndarray:
    """uint8 [N, 28, 28] images or [N] labels (0-9) from a decompressed IDX file."""
    magic, ndim = (2051, 3) if images else (2049, 1)
    header_size = 4 * (1 + ndim)
    if len(data) < header_size:
        raise _BadFile(f"{len(data)} bytes, shorter than an IDX header")
    header = np.frombuffer(data, ">u4", count=1 + ndim)
    if header[0] != magic:
        raise _BadFile(f"magic number {header[0]}, expected {magic}")
    shape = tuple(int(size) for size in header[1:])
    if images and shape[1:] != (28, 28):
        raise _BadFile(f"images are {shape[1]}x{shape[2]}, expected 28x28")
    if len(data) != header_size + math.prod(shape):
        raise _BadFile(f"{len(data)} bytes, but its header says {header_size + math.prod(shape)}")
    array = np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)
    if not images and array.size and array.max() > 9:
        raise _BadFile(f"label {array.max()} out of range 0-9")
    return array


def _to_unit_float(pixels: np.ndarray) -> torch.Tensor:
    """[N, ...] uint8 -> [N, D] float32 in [0, 1], in one pass."""
    return torch.from_numpy(np.divide(pixels.reshape(len(pixels), -1), np.float32(255), dtype=np.float32))


# --- CIFAR-10 ----------------------------------------------------------------

class _BatchUnpickler(pickle.Unpickler):
    """Unpickling can run arbitrary code; a CIFAR batch needs only numpy arrays."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def _load_cifar10(data_dir: str, download: bool) -> Dataset:
    tarball, folder = Path(data_dir, CIFAR_TARBALL), Path(data_dir, CIFAR_FOLDER)
    if not tarball.is_file() and not folder.is_dir():
        if not download:
            raise DataError(f"CIFAR-10 not found: neither {tarball} nor {folder}/ exists: "
                            f"{_fetch_hint('cifar10', data_dir)} (or pass --download), or download "
                            f"{MIRRORS['cifar10'][0]}{CIFAR_TARBALL} there")
        fetch("cifar10", data_dir)
    blobs = _cifar_from_tarball(tarball, data_dir) if tarball.is_file() else _cifar_from_folder(folder)
    batches = []
    for where, blob in blobs:
        try:
            batches.append(_parse_cifar_batch(blob))
        except _BadFile as error:
            raise _bad_file("cifar10", where, data_dir, str(error)) from None
    x_train = np.concatenate([x for x, _ in batches[:5]])
    y_train = np.concatenate([y for _, y in batches[:5]])
    x_test, y_test = batches[5]
    # CIFAR rows are already channel-first (1024 red, 1024 green, 1024 blue).
    return Dataset("cifar10", _to_unit_float(x_train), torch.from_numpy(y_train),
                   _to_unit_float(x_test), torch.from_numpy(y_test), num_classes=10, image_shape=(3, 32, 32))


def _cifar_from_tarball(tarball: Path, data_dir: str) -> list[tuple[str, bytes]]:
    tar_bytes = _read_verified("cifar10", tarball, data_dir)
    blobs = []
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for batch in _CIFAR_BATCHES:
                member = tar.extractfile(f"{CIFAR_FOLDER}/{batch}")
                if member is None:
                    raise _BadFile(f"{CIFAR_FOLDER}/{batch} is not a file")
                blobs.append((f"{tarball} member {CIFAR_FOLDER}/{batch}", member.read()))
    except (tarfile.TarError, KeyError, OSError, EOFError, _BadFile) as error:
        raise _bad_file("cifar10", tarball, data_dir, f"unreadable tar: {error}") from None
    return blobs


def _cifar_from_folder(folder: Path) -> list[tuple[str, bytes]]:
    blobs = []
    for batch in _CIFAR_BATCHES:
        path = folder / batch
        try:
            blobs.append((str(path), path.read_bytes()))
        except OSError as error:
            raise DataError(f"cannot read CIFAR-10 file {path}: {error.strerror or error}: the folder must hold "
                            f"{', '.join(_CIFAR_BATCHES)} as extracted from {CIFAR_TARBALL}") from None
    return blobs


def _parse_cifar_batch(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 3072] images and int64 [N] labels from one pickled batch."""
    try:
        batch = _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 - bad pickles raise nearly anything
        raise _BadFile(f"not a CIFAR batch pickle: {type(error).__name__}: {error}") from None
    if not isinstance(batch, dict):
        raise _BadFile("not a CIFAR batch pickle: no dict inside")
    images = batch.get(b"data")
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2
            and images.shape[1] == 3072 and len(images) > 0):
        raise _BadFile("b'data' is not a non-empty uint8 [N, 3072] array")
    try:
        labels = np.asarray(batch.get(b"labels"), dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise _BadFile("b'labels' is not a list of integers") from None
    if labels.shape != (len(images),):
        raise _BadFile(f"b'labels' has shape {labels.shape}, expected ({len(images)},)")
    if labels.min() < 0 or labels.max() > 9:
        raise _BadFile("a label is out of range 0-9")
    return images, labels


# --- image folders -------------------------------------------------------------

def _load_imagefolder(root: Path) -> Dataset:
    """All images must share one size; grayscale if the first image is, else RGB.

    Decoding runs in this thread: on 32x32 JPEGs most of the per-file cost is
    Python in PIL, so threads only contend for the GIL (measured slower), and
    forking workers is unsafe in an MPI process.
    """
    splits = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"image folder {folder} not found: put images in {root}/train/<class>/ and "
                            f"{root}/test/<class>/ (*.png, *.jpg) and pass that folder as --data-dir")
        splits[split] = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    classes = splits["train"]
    if len(classes) < 2:
        raise DataError(f"image folder {root}/train has {len(classes)} class subfolder(s), FF needs at least 2 "
                        f"(a negative is an image under a wrong label): expected {root}/train/<class>/*.png")
    if splits["test"] != classes:
        raise DataError(f"image folder {root}: test classes {splits['test']} differ from train classes {classes}")
    files = {split: [sorted(p for p in (root / split / c).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
                     for c in classes] for split in ("train", "test")}
    first = next((paths[0] for paths in files["train"] if paths), None)
    if first is None or not any(files["test"]):
        raise DataError(f"image folder {root}: no *.png/*.jpg images in train/<class>/ or test/<class>/")
    with _open_image(first) as image:
        size, mode = image.size, "L" if image.mode in ("1", "L") else "RGB"
    tensors = []
    for split in ("train", "test"):
        paths = [path for per_class in files[split] for path in per_class]
        labels = np.repeat(np.arange(len(classes)), [len(per_class) for per_class in files[split]])
        tensors += [_decode_images(paths, size, mode, first), torch.from_numpy(labels.astype(np.int64))]
    channels = 1 if mode == "L" else 3
    return Dataset("imagefolder", *tensors, num_classes=len(classes), image_shape=(channels, size[1], size[0]))


_EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def _open_image(path: Path) -> Image.Image:
    from PIL import Image
    try:
        return Image.open(path, formats=("PNG", "JPEG"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot decode image {path}: {error}") from None


def _decode_images(paths: list[Path], size: tuple[int, int], mode: str, first: Path) -> torch.Tensor:
    """[N, C*H*W] float32, channel-first like CIFAR."""
    from PIL import Image
    width, height = size
    channels = 1 if mode == "L" else 3
    pixels = np.empty((len(paths), height, width, channels), np.uint8)
    for index, path in enumerate(paths):
        with _open_image(path) as image:
            if image.size != size:
                raise DataError(f"image {path} is {image.size[0]}x{image.size[1]} but {first} is "
                                f"{width}x{height}: all images must have the same size")
            if image.mode not in _EIGHT_BIT_MODES:  # PIL's convert would clip 16-bit or float pixels to white
                raise DataError(f"image {path} has {image.mode} pixels: pffbench reads 8-bit grayscale, RGB or "
                                f"palette images; convert it to 8 bits per channel")
            try:
                image.draft(mode, size)  # JPEG: the decoder emits `mode` itself, no convert pass
                pixels[index] = np.asarray(image if image.mode == mode else image.convert(mode)).reshape(
                    height, width, channels)
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                raise DataError(f"cannot decode image {path}: {error}") from None
    out = np.empty((len(paths), channels, height, width), np.float32)
    np.divide(pixels.transpose(0, 3, 1, 2), np.float32(255), out=out)
    return torch.from_numpy(out.reshape(len(paths), -1))


# --- synthetic -------------------------------------------------------------------

def _synthetic(num_train: int = 2000, num_test: int = 500) -> Dataset:
    """Ten noisy prototypes in 100 dimensions, the same on every call.

    Like MNIST strokes, each prototype switches on a random 30% of the
    features; a feature is on in about three classes, so no single one names
    the class (best single-feature accuracy ~17%), while together they do
    (nearest centroid: 99.8%): FF with 2x200 units passes 90% in about 6
    epochs.  The first 10 features are 0: the label embedding overwrites them.
    """
    classes, dim = 10, 100
    rng = np.random.default_rng(12345)
    prototypes = np.where(rng.random((classes, dim - classes)) < 0.3, 0.7, 0.15)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = rng.permutation(np.arange(n) % classes)
        x = np.zeros((n, dim), np.float32)
        x[:, classes:] = np.clip(prototypes[labels] + rng.normal(0.0, 0.4, (n, dim - classes)), 0, 1)
        return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))

    x_train, y_train = sample(num_train)
    x_test, y_test = sample(num_test)
    return Dataset("synthetic", x_train, y_train, x_test, y_test, num_classes=classes, image_shape=(dim,))


# --- command line ------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _check(name: str, data_dir: str) -> list[str]:
    """One line per verified file (or one summary line for data sets without published sums)."""
    if name in ("mnist", "fashion-mnist"):
        folder = _idx_folder(name, data_dir, download=False)
        paths = [folder / filename for filename in IDX_FILES]
    elif name == "cifar10" and Path(data_dir, CIFAR_TARBALL).is_file():
        paths = [Path(data_dir, CIFAR_TARBALL)]
    else:
        dataset = load_dataset(name, data_dir)
        return [f"ok  {name}: {len(dataset.x_train)} train / {len(dataset.x_test)} test, "
                f"shape {dataset.image_shape}, {dataset.num_classes} classes (no published checksums)"]
    of = " of decompressed bytes" if name in _MD5_OF_DECOMPRESSED else ""
    for path in paths:
        _read_verified(name, path, data_dir)
    return [f"ok  {path}  md5{of} {MD5[name][path.name]}" for path in paths]


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m pffbench.data", description="Download or verify pffbench data sets.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command, help_text in (("fetch", "download missing or bad files and verify them"),
                               ("check", "verify the files that are there")):
        sub = commands.add_parser(command, help=help_text)
        sub.add_argument("name", choices=DATASETS)
        sub.add_argument("--data-dir", default=None, help="default: $PFFBENCH_DATA, else ./data")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    try:
        lines = [f"ok  {path}" for path in fetch(args.name, data_dir)] if args.command == "fetch" \
            else _check(args.name, data_dir)
    except DataError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
