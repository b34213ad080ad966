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
import os
import sys
from pathlib import Path

from .datasets.cifar import _load_cifar10
from .datasets.files import (BUNDLED_DIRS, CIFAR_FOLDER, CIFAR_TARBALL, CLASS_NAMES, IDX_FILES, MD5, MIRRORS,  # noqa: F401
                             _MD5_OF_DECOMPRESSED, DataError, Dataset, _read_verified, default_data_dir, fetch)
from .datasets.idx import _idx_folder, _load_idx_dataset
from .datasets.images import _load_imagefolder
from .datasets.synthetic import _synthetic

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
                f"shape {dataset.image_shape}, {dataset.num_classes} classes "
                f"({', '.join(dataset.class_names)}; no published checksums)"]
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
