"""MNIST and Fashion-MNIST: the IDX files, verified and parsed."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .files import (BUNDLED_DIRS, CLASS_NAMES, IDX_FILES, _TITLES, DataError, Dataset, _bad_file, _BadFile,
                    _fetch_hint, _read_verified, fetch)


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
                   num_classes=10, image_shape=(1, 28, 28), class_names=CLASS_NAMES[name])


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
