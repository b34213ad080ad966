"""CIFAR-10 (python version): from its tarball or its extracted folder."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from .files import (CIFAR_FOLDER, CIFAR_TARBALL, CLASS_NAMES, MIRRORS, DataError, Dataset, _bad_file, _BadFile,
                    _fetch_hint, _read_verified, fetch)
from .idx import _to_unit_float

_CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


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
                   _to_unit_float(x_test), torch.from_numpy(y_test), num_classes=10, image_shape=(3, 32, 32),
                   class_names=CLASS_NAMES["cifar10"])


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
