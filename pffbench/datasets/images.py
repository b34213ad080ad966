"""A folder of images: <root>/{train,test}/<class>/*.png|jpg|jpeg."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .files import DataError, Dataset

if TYPE_CHECKING:  # PIL is imported where images are decoded: most runs never need it
    from PIL import Image

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _load_imagefolder(root: Path, say=None) -> Dataset:
    """All images must share one size; grayscale if the first image is, else RGB.
    ``say``: called with one line before the decoding starts and one when it
    ends (CIFAR-10's 60,000 JPEGs take about 30 s), so a user is not left
    looking at a silent console.

    The classes are the training split's visible subfolders in sorted order
    (label i is the i-th name; recorded with the run as ``class_names``).
    Hidden entries (names starting with '.': a notebook's .ipynb_checkpoints,
    a desktop's .Trash-1000, a NAS's .snapshot, macOS's ._name files) are
    never classes or images: as a class one would shift every label.

    Decoding runs in this thread: on 32x32 JPEGs most of the per-file cost is
    Python in PIL, so threads only contend for the GIL (measured slower), and
    forking workers is unsafe in an MPI process.
    """
    classes, files = _image_classes(root)
    count = sum(len(per_class) for split in files.values() for per_class in split)
    if say:
        say(f"reading the image folder {root}: decoding {count:,} images in {len(classes)} classes ...")
    started = time.perf_counter()
    first = files["train"][0][0]
    with _open_image(first) as image:
        size, mode = image.size, "L" if image.mode in ("1", "L") else "RGB"
    tensors = []
    for split in ("train", "test"):
        paths = [path for per_class in files[split] for path in per_class]
        labels = np.repeat(np.arange(len(classes)), [len(per_class) for per_class in files[split]])
        tensors += [_decode_images(paths, size, mode, first), torch.from_numpy(labels.astype(np.int64))]
    channels = 1 if mode == "L" else 3
    if say:
        say(f"read {count:,} images of {size[0]}x{size[1]} {mode} in {time.perf_counter() - started:.1f}s")
    return Dataset("imagefolder", *tensors, num_classes=len(classes), image_shape=(channels, size[1], size[0]),
                   class_names=tuple(classes))


def _visible(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return [path for path in _visible(folder) if path.suffix.lower() in _IMAGE_SUFFIXES]


def _image_classes(root: Path) -> tuple[list[str], dict[str, list[list[Path]]]]:
    """The training classes in label order and each split's images per class,
    once both splits agree on the classes and every one has training images;
    else a DataError naming the folder."""
    splits = {}
    for split in ("train", "test"):
        folder = root / split
        if not folder.is_dir():
            # a data root holding image folders (e.g. $PFFBENCH_DATA with cifar10-jpeg/): name them
            inner = sorted(str(d) for d in _visible(root) if d.is_dir() and (d / "train").is_dir()) \
                if root.is_dir() else []
            hint = f" (did you mean --data-dir {' or '.join(inner)}?)" if inner else ""
            raise DataError(f"image folder {folder} not found{hint}: put images in {root}/train/<class>/ and "
                            f"{root}/test/<class>/ (*.png, *.jpg) and pass that folder as --data-dir")
        splits[split] = [entry.name for entry in _visible(folder) if entry.is_dir()]
    classes = splits["train"]
    if len(classes) < 2:
        raise DataError(f"image folder {root}/train has {len(classes)} class subfolder(s), FF needs at least 2 "
                        f"(a negative is an image under a wrong label): expected {root}/train/<class>/*.png")
    for name in splits["test"]:
        if name not in classes:
            raise DataError(f"image folder {root}/test/{name} is a class that {root}/train does not have: "
                            f"every test class must be a training class (rename, move or remove it)")
    files = {"train": [], "test": []}
    for name in classes:
        if name not in splits["test"]:
            raise DataError(f"image folder {root}/train/{name} has no test counterpart {root}/test/{name}: "
                            f"the test split must have the same class folders")
        files["train"].append(_images_in(root / "train" / name))
        if not files["train"][-1]:
            raise DataError(f"image folder {root}/train/{name} has no *.png/*.jpg/*.jpeg images: every class "
                            f"needs training images (add some, or remove the folder)")
        files["test"].append(_images_in(root / "test" / name))
    if not any(files["test"]):
        raise DataError(f"image folder {root}: no *.png/*.jpg images in test/<class>/")
    return classes, files


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
