"""Loading a data set by name (``load_dataset``), holding rows out for validation (``validation_split``) and saying where it comes from (``source_of``); the command
line that fetches and checks files is python -m pffbench.data."""
from __future__ import annotations

import os
from pathlib import Path

from .cifar import _load_cifar10
from .files import BUNDLED_DIRS, CIFAR_FOLDER, CIFAR_TARBALL, DataError, Dataset, default_data_dir
from .idx import _idx_folder, _load_idx_dataset
from .images import _load_imagefolder
from .synthetic import _synthetic

DATASETS = ("mnist", "fashion-mnist", "cifar10", "imagefolder", "synthetic")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = False,
                 say=None) -> Dataset:
    """Load a data set; with ``download``, missing files are fetched first.

    ``imagefolder`` reads ``<data_dir>/{train,test}/<class>/*.png|jpg|jpeg``;
    ``say`` (a function of one line) hears when its slow decoding starts and ends.
    """
    data_dir = default_data_dir() if data_dir is None else os.fspath(data_dir)
    loaders = {"mnist": lambda: _load_idx_dataset(name, data_dir, download),
               "fashion-mnist": lambda: _load_idx_dataset(name, data_dir, download),
               "cifar10": lambda: _load_cifar10(data_dir, download),
               "imagefolder": lambda: _load_imagefolder(Path(data_dir), say),
               "synthetic": _synthetic}
    if name not in loaders:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    try:
        return loaders[name]()
    except OSError as error:  # a file or folder this process may not read, a failing disk, ...
        raise DataError(f"{name}: cannot read {error.filename or data_dir}: {error.strerror or error}") from None


VALIDATION_SEED = 20_250_701  # one held-out set for every trial and every --seed


def validation_split(dataset: Dataset, rows: int) -> Dataset:
    """``dataset`` with ``rows`` training rows held out as its evaluation set
    (x_test, y_test) and trained on the rest: a seeded random choice, the
    same for every run, the remaining rows in their order.  The test set is
    not touched (pffbench.tune picks settings on this, never on the test
    set).  DataError if fewer than ``rows`` + 1 training rows."""
    import dataclasses

    import torch
    total = dataset.x_train.shape[0]
    if not 0 < rows < total:
        raise DataError(f"--validation {rows}: {dataset.name} has {total} training rows; hold out 1 to {total - 1}")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    held, kept = order[:rows].sort().values, order[rows:].sort().values
    return dataclasses.replace(dataset, x_train=dataset.x_train[kept], y_train=dataset.y_train[kept],
                               x_test=dataset.x_train[held], y_test=dataset.y_train[held])


def source_of(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """Where ``load_dataset(name, data_dir)`` reads from, for the run's start
    line: the folder or file, "the bundled copy in ..." when MNIST falls back
    to the repository's, "generated" for synthetic data."""
    data_dir = default_data_dir() if data_dir is None else os.fspath(data_dir)
    if name == "synthetic":
        return "generated"
    if name in ("mnist", "fashion-mnist"):
        try:
            folder = _idx_folder(name, data_dir, False)
        except DataError:
            return str(Path(data_dir, name))
        bundled = BUNDLED_DIRS.get(name)
        return f"the bundled copy in {folder}" if bundled is not None and folder == bundled \
            and Path(data_dir, name) != bundled else str(folder)
    if name == "cifar10":
        tarball = Path(data_dir, CIFAR_TARBALL)
        return str(tarball if tarball.is_file() else Path(data_dir, CIFAR_FOLDER))
    return str(data_dir)
