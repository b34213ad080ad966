"""A folder of images: <root>/{train,test}/<class>/*.png|jpg|jpeg."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .files import DataError, Dataset

if TYPE_CHECKING:  # PIL is imported where images are decoded: most runs never need it
    from PIL import Image

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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
