"""Data sets for the benchmark, as whole float32 tensors in [0, 1].

Every file is checked on every load (md5 where its publisher gives one, and
always its structure), so a run never trains on a damaged or different copy.
Problems surface as one-line ``DataError`` messages that say how to fix them.

Command line::

    python -m pffbench.data fetch mnist [--data-dir DIR]   # download + verify
    python -m pffbench.data check mnist [--data-dir DIR]   # verify what is there
    python -m pffbench.data flags cifar10 [--data-dir DIR] # the run flags that read it there, a line each
"""
from __future__ import annotations

import sys
from pathlib import Path

from .datasets.files import (CIFAR_TARBALL, IDX_FILES, JPEG_COPY, MD5, _MD5_OF_DECOMPRESSED, DataError,
                             _read_verified, cifar10_flags, default_data_dir, fetch)
from .datasets.idx import _idx_folder
# the loaders' API, re-exported here where users and tests find it
from .datasets.files import BUNDLED_DIRS, CIFAR_FOLDER, CLASS_NAMES, MIRRORS, Dataset  # noqa: F401
from .datasets.load import DATASETS, load_dataset, source_of, validation_split  # noqa: F401
from .launch.cli import _Parser
from .launch.command import command


# --- command line ------------------------------------------------------------

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


@command("pffbench.data")
def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m pffbench.data", description="Download or verify pffbench data sets.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command, help_text in (("fetch", "download missing or bad files and verify them"),
                               ("check", "verify the files that are there")):
        sub = commands.add_parser(command, help=help_text)
        sub.add_argument("name", choices=DATASETS)
        sub.add_argument("--data-dir", default=None, help="default: $PFFBENCH_DATA, else ./data")
    sub = commands.add_parser("flags", help="the run flags that read the data set in --data-dir, a line each "
                                            "(cifar10: its official files, else its JPEG copy); for scripts")
    sub.add_argument("name", choices=("cifar10",))
    sub.add_argument("--data-dir", default=None, help="default: $PFFBENCH_DATA, else ./data")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    try:
        if args.command == "flags":
            lines = cifar10_flags(data_dir)
            if lines is None:
                raise DataError(f"no CIFAR-10 in {data_dir} ({CIFAR_TARBALL}, its extracted folder or {JPEG_COPY}/): "
                                "set --data-dir or PFFBENCH_DATA")
        else:
            lines = [f"ok  {path}" for path in fetch(args.name, data_dir)] if args.command == "fetch" \
                else _check(args.name, data_dir)
    except DataError as error:
        print(f"pffbench.data: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
