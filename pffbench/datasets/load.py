"""Loading a data set by name (``load_dataset``) and saying where it comes from (``source_of``); the command
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
