"""``--augment``: the standard CIFAR-10 training augmentation, random crop and horizontal flip, in pure torch.

Each training example is padded with ``PAD`` = 4 zero pixels a side, cropped back to H x W at a random offset
(each of the (2 PAD + 1)^2 offsets equally likely) and flipped left to right with probability 1/2: the recipe of
He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition" (CVPR 2016, section 4.2, after Lee et al.
2015, "Deeply-Supervised Nets"), torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``.

The random part (``draw``) is apart from the arithmetic (``crop_and_flip``): a schedule draws one epoch's
offsets and flips with its minibatch generator at the epoch's start, for every row of the epoch in minibatch
order, so every rank that holds the data draws the same ones (a data-parallel rank then takes its own rows'),
and a checkpoint at an epoch boundary, which holds that generator's state, holds the augmentation's too.  The
arithmetic is a gather per example: what one example becomes does not depend on the others in its minibatch,
so any split of a minibatch over ranks or microbatches augments it as one process does, bit for bit.

Only training minibatches are augmented; evaluation, test and validation rows never are (the schedules call
this on the rows of a training minibatch only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PAD = 4  # pixels of zeros a side before the random crop (He et al. 2016 on 32x32 CIFAR-10)


@dataclass(frozen=True)
class Draws:
    """The random part of the augmentation of n examples: ``shifts`` [n, 2] (int64: the crop's top and
    left in the padded image, each in 0..2*PAD; PAD, PAD is the image itself) and ``flips`` [n] (bool)."""
    shifts: torch.Tensor
    flips: torch.Tensor

    def __getitem__(self, index) -> "Draws":
        """The draws of the examples ``index`` picks (a slice, or a tensor of positions)."""
        return Draws(self.shifts[index], self.flips[index])

    def to(self, device) -> "Draws":
        """The draws on ``device`` (where the rows they augment are: one copy an epoch, not one a step)."""
        return Draws(self.shifts.to(device), self.flips.to(device))


def draw(count: int, generator: torch.Generator, pad: int = PAD) -> Draws:
    """``count`` examples' crop offsets and flips from ``generator`` (advanced by exactly these two draws, on the
    CPU: the same on every rank and device that holds the same generator state)."""
    shifts = torch.randint(0, 2 * pad + 1, (count, 2), generator=generator)
    flips = torch.randint(0, 2, (count,), generator=generator).bool()
    return Draws(shifts, flips)


def crop_and_flip(images: torch.Tensor, draws: Draws, pad: int = PAD) -> torch.Tensor:
    """Augmented copies [n, C, H, W] of ``images`` [n, C, H, W] (any float dtype, any device): example i
    zero-padded by ``pad`` pixels a side, cropped to H x W with its top-left corner at ``draws.shifts[i]``
    of the padded image, then mirrored left to right where ``draws.flips[i]``.

    out[i, c, y, x] = padded[i, c, y + dy_i, dx_i + (W - 1 - x if flip_i else x)], one gather: the padded
    images' pixels of each example indexed by a [H, W] grid of flat positions (no loop over examples)."""
    n, channels, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))  # zeros: [n, C, H + 2 pad, W + 2 pad]
    device = images.device
    shifts, flips = draws.shifts.to(device), draws.flips.to(device)
    rows = shifts[:, :1] + torch.arange(height, device=device)  # [n, H]
    across = torch.arange(width, device=device)
    cols = shifts[:, 1:] + torch.where(flips[:, None], width - 1 - across, across)  # [n, W]
    flat = rows[:, :, None] * (width + 2 * pad) + cols[:, None, :]  # [n, H, W]: positions in a padded channel
    index = flat.reshape(n, 1, height * width).expand(n, channels, height * width)
    return padded.flatten(2).gather(2, index).reshape(n, channels, height, width)


def augment_rows(rows: torch.Tensor, image_shape: tuple[int, int, int], draws: Draws) -> torch.Tensor:
    """``crop_and_flip`` on a data set's flattened rows [n, C*H*W] (in (C, H, W) order, as every loader gives
    them): the augmented rows [n, C*H*W]."""
    images = rows.reshape(rows.shape[0], *image_shape)
    return crop_and_flip(images, draws).reshape(rows.shape[0], -1)


def image_shape_of(shape) -> tuple[int, int, int]:
    """The (C, H, W) ``--augment`` crops and flips, from a core/types.Shape or a Dataset's ``image_shape``;
    ValueError where the rows are not images (launch/validate.py refuses such a run first, in one line)."""
    image = tuple(getattr(shape, "image_shape", shape) or ())
    if len(image) != 3:
        raise ValueError(f"--augment crops and flips images (C, H, W); these rows are {image or 'of no shape'}")
    return image
