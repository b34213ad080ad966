"""The data sets' files: names, checksums, mirrors, the bundled copy;
verified reads and downloads; the Dataset and the one-line DataError."""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import secrets
import shlex
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..store.atomic import atomic_file

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR_TARBALL = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
JPEG_COPY = "cifar10-jpeg"  # CIFAR-10 re-encoded as JPEG files in an image folder (lossy: "CIFAR-10 (JPEG copy)")

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
BUNDLED_DIRS: dict[str, Path] = {"mnist": Path(__file__).resolve().parents[2] / "data" / "mnist"}

_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
# label order as published: Zalando's README, and batches.meta of the CIFAR-10 tarball
CLASS_NAMES = {"mnist": tuple("0123456789"),
               "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                 "Sneaker", "Bag", "Ankle boot"),
               "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                           "truck"),
               "synthetic": tuple(f"prototype {i}" for i in range(10))}
_DOWNLOAD_TIMEOUT_S = 60


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
    class_names: tuple[str, ...] = ()  # what label i means, in label order (recorded with the run)

    @property
    def num_features(self) -> int:
        return self.x_train.shape[1]


def cifar10_flags(data_dir: str | os.PathLike) -> list[str] | None:
    """The run flags that read CIFAR-10 from the data folder ``data_dir``: its official files (the
    tarball, or the folder extracted from it) as ``--dataset cifar10 --data-dir DIR``, else its JPEG
    copy DIR/cifar10-jpeg/{train,test}/<class>/ as ``--dataset imagefolder --data-dir DIR/cifar10-jpeg``;
    None where neither is there.  The one place that choice is made: paper_claims, tools/model_validation.py,
    and the shell scripts (jobs/race.sbatch, tools/paper_gpu.sh) through ``python -m pffbench.data flags cifar10``."""
    root = Path(data_dir)  # the flags keep the path as given: a run's recorded --data-dir is part of its identity
    if (root / CIFAR_TARBALL).is_file() or (root / CIFAR_FOLDER).is_dir():
        return ["--dataset", "cifar10", "--data-dir", os.fspath(data_dir)]
    if (root / JPEG_COPY).is_dir():
        return ["--dataset", "imagefolder", "--data-dir", os.path.join(data_dir, JPEG_COPY)]
    return None


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
    complete and verified (store/atomic.py: temp file, fsync, rename), so
    neither a killed download nor a bad mirror leaves a file that looks valid."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create folder {dest.parent}: {error.strerror or error}") from None
    failures = []
    for base in MIRRORS[name]:
        url = base + dest.name
        temp = dest.parent / f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
        try:
            atomic_file(str(dest), lambda path: _fetch_verified(url, path, name, dest.name), temp=str(temp),
                        passes=(Exception,))  # a mirror's failure, said below as the mirror said it
            return
        except (OSError, http.client.HTTPException, ValueError, _BadFile) as error:
            failures.append(f"{url}: {' '.join(str(error).split())}")
    raise DataError(f"could not download {_TITLES[name]} file {dest} ({'; '.join(failures)}): "
                    f"download it by hand from one of those URLs and put it there")




def _fetch_verified(url: str, path: str, name: str, filename: str) -> None:
    """Download ``url`` into ``path``; raise _BadFile unless it is complete and its md5 matches."""
    size = 0
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(path, "wb") as out:
        expected = response.headers.get("Content-Length")
        while chunk := response.read(1 << 20):
            out.write(chunk)
            size += len(chunk)
    if expected is not None and size != int(expected):  # read() ends quietly on a dropped connection
        raise _BadFile(f"connection dropped after {size} of {expected} bytes")
    _verified_contents(Path(path).read_bytes(), name, filename)


def default_data_dir() -> str:
    return os.environ.get("PFFBENCH_DATA") or "data"


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
