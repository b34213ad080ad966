"""The convolutional net of ``--conv C1,C2,...`` (issue 24), in pure torch.

Block i: a 3x3 convolution (padding 1, stride 1, no bias: the normalization
after it removes any constant a channel adds, so a bias would only learn
round-off noise, which Adam scales up to full steps) from the previous
block's channels (the image's for block 0) to C_i, GroupNorm, ReLU, then 2x2 max
pooling (stride 2; an odd side is rounded down, as torch does) after every
block but the last.  ``--layers`` adds dense layers (Linear + ReLU) on the
last block's flattened output; the backprop baselines end in a linear
softmax head, the local rules in an auxiliary head per layer.

Why GroupNorm: it normalizes each example on its own (over groups of
channels and the whole image), so a minibatch split over data-parallel
ranks (dp-backprop, ddp) or into microbatches (gpipe, 1f1b) is normalized
exactly as one process normalizes it whole: p ranks compute what one
computes.  BatchNorm's statistics over the minibatch would make every split
compute something else.  Groups: gcd(C, 32), Wu & He's 32 (ECCV 2018,
"Group Normalization") where C allows, fewer where it does not.

Layers are numbered as the schedules number them: blocks 0..B-1, dense
layers B..B+L-1, the softmax head B+L.  Inputs are a data set's flattened
rows in (C, H, W) order (every loader in pffbench/datasets gives them so);
the first block views them as images.  Each layer's initial weights depend
only on (seed, layer index), as ff.make_linear's do, so every partition of
the net over ranks starts from one state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ... import ff

GROUPS = 32          # GroupNorm's groups where the channels allow (gcd(C, GROUPS) otherwise)
AUXILIARY_GRID = 2   # an auxiliary head pools a block's output to this many cells a side (DGL's small grid)
# FLOPs per output element beside the convolution's: GroupNorm (mean, variance, normalize, scale and shift: ~5),
# ReLU (1), the 2x2 max pool (3 comparisons per pooled element, < 1 per element); an approximation
ELEMENTWISE_FLOPS = 7
# rows a forward pass takes when evaluating: a chunk's activations should stay in the cache.  The race's net
# (--conv 20,80,160,320 on 32x32 images, 1 thread, the 2-vCPU Intel Xeon VM, 2026-12-06, best of 5 over
# 2,000 rows): 0.64-0.66 ms a row at 32 to 250 rows, 0.83 ms at 500, 0.88 ms at 1,000 (block 0's output
# is 80 KB a row)
EVAL_ROWS = 100


def groups(channels: int) -> int:
    """GroupNorm's groups for ``channels`` channels: gcd(channels, 32)."""
    return math.gcd(channels, GROUPS)


def _generator(seed: int, index: int) -> torch.Generator:
    """Layer ``index``'s initial draw, keyed as ff.make_linear keys it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


class ConvBlock(torch.nn.Module):
    """One block: [N, C_in, H, W] (or its flattened rows [N, C_in*H*W]) ->
    conv 3x3 -> GroupNorm -> ReLU (-> 2x2 max pool if ``pool``) ->
    [N, C_out, H', W'] with H' = H // 2 if pooled, else H (W alike).

    ``in_shape`` (C_in, H, W) is no parameter: the block views a flat input
    as images of it (the pipeline's messages carry the contiguous rows)."""

    def __init__(self, in_shape: tuple[int, int, int], out_channels: int, pool: bool):
        super().__init__()
        self.in_shape, self.pool = tuple(in_shape), pool
        self.conv = torch.nn.Conv2d(in_shape[0], out_channels, kernel_size=3, padding=1, bias=False)
        self.norm = torch.nn.GroupNorm(groups(out_channels), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x.reshape(x.shape[0], *self.in_shape))))
        return F.max_pool2d(x, 2) if self.pool else x


class AuxiliaryHead(torch.nn.Module):
    """A block's auxiliary classifier (DGL, Belilovsky et al. ICML 2020):
    adaptive average pooling of [N, C, H, W] to a ``grid`` x ``grid`` map,
    flattened, then ``linear`` (C*grid*grid -> classes): the logits [N, classes]."""

    def __init__(self, linear: torch.nn.Linear, grid: int):
        super().__init__()
        self.linear, self.grid = linear, grid

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(F.adaptive_avg_pool2d(h, self.grid).flatten(1))


@dataclass(frozen=True)
class ConvNet:
    """The net's architecture: ``image`` (C, H, W) of an input row,
    ``channels`` of each block, ``dense`` widths after the last block,
    ``num_classes``.  It makes the layers (``make_layer``), runs one
    (``apply``), says what shape each layer hands on (``shapes``) and what
    each costs (``costs``); ``problem`` says why it cannot run on its images."""
    image: tuple[int, ...]
    channels: tuple[int, ...]
    dense: tuple[int, ...]
    num_classes: int

    @classmethod
    def of(cls, config, shape) -> "ConvNet":
        """The net of a Config (``conv``: channels, ``layers``: dense widths) on data of Shape ``shape``."""
        return cls(tuple(shape.image_shape or ()), tuple(config.conv), tuple(config.layers), shape.num_classes)

    @property
    def num_blocks(self) -> int:
        return len(self.channels)

    @property
    def num_layers(self) -> int:
        """Blocks and dense layers: the hidden layers (the head is index ``num_layers``)."""
        return len(self.channels) + len(self.dense)

    def problem(self) -> str | None:
        """One line if the net cannot run on its images (not images, or pooled below a pixel), else None."""
        if len(self.image) != 3:
            return (f"--conv needs images (C, H, W); this data set's rows are vectors of "
                    f"{'x'.join(map(str, self.image))} features")
        side = min(self.image[1:])
        most = side.bit_length()  # blocks that fit: one per halving down to 1 pixel, the last unpooled
        if self.num_blocks > most:
            return (f"--conv {','.join(map(str, self.channels))}: {self.num_blocks} blocks pool "
                    f"{'x'.join(map(str, self.image))} images below one pixel (2x2 pooling between blocks): "
                    f"use at most {most} blocks")
        return None

    def shapes(self) -> list[tuple[int, ...]]:
        """The shape of one row as each layer sees it: [i] is layer i's input, [num_layers] the head's, and
        [num_layers + 1] = (num_classes,), the logits.  Blocks' are (C, H, W), dense layers' (width,)."""
        shapes = [tuple(self.image)]
        for i, channels in enumerate(self.channels):
            _, height, width = shapes[-1]
            pooled = i < self.num_blocks - 1
            shapes.append((channels, height // 2, width // 2) if pooled else (channels, height, width))
        shapes += [(width,) for width in self.dense]
        return shapes + [(self.num_classes,)]

    @property
    def dims(self) -> list[int]:
        """The values of one row at each layer boundary, ``shapes`` flattened: what a message carries per row,
        what the results file records as ``dims`` (the input's C*H*W first, the classes last)."""
        return [math.prod(shape) for shape in self.shapes()]

    def make_layer(self, index: int, seed: int) -> torch.nn.Module:
        """Layer ``index`` with its initial weights, keyed by (seed, index): a ConvBlock (index < num_blocks,
        its convolution uniform in +-1/sqrt(C_in * 9); GroupNorm scale 1, shift 0), else an
        nn.Linear from ff.make_linear (a dense layer, or the head at ``num_layers``)."""
        if not 0 <= index <= self.num_layers:
            raise IndexError(f"layer {index} of a net of {self.num_layers} layers and a head")
        shapes = self.shapes()
        if index >= self.num_blocks:
            return ff.make_linear(math.prod(shapes[index]), math.prod(shapes[index + 1]), seed, index)
        block = ConvBlock(shapes[index], self.channels[index], pool=index < self.num_blocks - 1)
        bound = (shapes[index][0] * 9) ** -0.5
        with torch.no_grad():
            block.conv.weight.uniform_(-bound, bound, generator=_generator(seed, index))
        return block

    def auxiliary_head(self, index: int, seed: int, key: int) -> torch.nn.Module:
        """Hidden layer ``index``'s auxiliary classifier, its Linear keyed by (seed, ``key``): an
        AuxiliaryHead on a block, a plain Linear (width -> classes) on a dense layer."""
        out = self.shapes()[index + 1]
        if index >= self.num_blocks:
            return ff.make_linear(out[0], self.num_classes, seed, key)
        grid = min(AUXILIARY_GRID, *out[1:])
        return AuxiliaryHead(ff.make_linear(out[0] * grid * grid, self.num_classes, seed, key), grid)

    def apply(self, index: int, layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Layer ``index``'s forward pass on ``x`` (a block: flat rows or images; a dense layer or the head:
        flattened first; ReLU after every dense layer, not after the head)."""
        if index < self.num_blocks:
            return layer(x)
        y = layer(x.flatten(1))
        return y if index == self.num_layers else F.relu(y)

    def costs(self, auxiliary: bool = False) -> list[int]:
        """Forward FLOPs of one row in each layer, the head last: a block's convolution 2 * C_in * 9 * C_out
        * H * W plus ELEMENTWISE_FLOPS per output element, a Linear's 2 * in * out.  Their backward passes
        cost about twice as much alike, so the ratios are those of a training step (the first layer's
        backward, which needs no input gradient, is cheaper: not modelled).  ``auxiliary``: each hidden
        layer's auxiliary head added to it (the local rules: average pooling, then 2 * in * classes)."""
        shapes, costs = self.shapes(), []
        for index in range(self.num_layers + 1):
            source, out = shapes[index], shapes[index + 1]
            if index < self.num_blocks:
                _, height, width = source
                cost = 2 * source[0] * 9 * out[0] * height * width + ELEMENTWISE_FLOPS * out[0] * height * width
            else:
                cost = 2 * math.prod(source) * math.prod(out)
            if auxiliary and index < self.num_layers:
                grid = min(AUXILIARY_GRID, *out[1:]) if index < self.num_blocks else 1
                cost += math.prod(out) + 2 * out[0] * grid * grid * self.num_classes
            costs.append(cost)
        return costs

    def model(self, seed: int) -> "ConvModel":
        return ConvModel(self, seed)


class ConvModel(torch.nn.Module):
    """The whole net trained by backprop: ``hidden`` (blocks, then dense layers) and ``head``, as the
    baselines' MLP has them (schedules/backprop/mlp.py).  Input [N, C*H*W] rows, output logits [N, classes]."""

    def __init__(self, net: ConvNet, seed: int):
        super().__init__()
        self.net = net
        self.hidden = torch.nn.ModuleList(net.make_layer(i, seed) for i in range(net.num_layers))
        self.head = net.make_layer(net.num_layers, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.hidden):
            x = self.net.apply(index, layer, x)
        return self.net.apply(self.net.num_layers, self.head, x)


@torch.no_grad()
def accuracy(net: ConvNet, layers: list, x: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_ROWS) -> float:
    """Test accuracy of the net made of ``layers`` (every hidden layer, then the head; e.g. gathered from a
    pipeline's stages) on rows ``x`` [n, C*H*W] with labels ``y`` [n], ``batch_size`` rows at a time
    (default EVAL_ROWS: a chunk's activations stay in the cache)."""
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        h = x[start:start + batch_size]
        for index, layer in enumerate(layers):
            h = net.apply(index, layer, h)
        correct += (h.argmax(dim=1) == y[start:start + batch_size]).sum().item()
    return correct / x.shape[0]
