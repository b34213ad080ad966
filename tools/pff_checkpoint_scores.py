"""Goodness classification of a PFF checkpoint, by which layers are scored, on test and training rows.

    python tools/pff_checkpoint_scores.py CHECKPOINT_DIR/epoch-NNNNNN/rank-RRRR.pt [--train-rows 10000]

A Goodness row's checkpoint (``--checkpoint-dir``; All-Layers' ``carry``: every layer's weights and bias,
flattened, as the rank published them after the round's last chapter) is rebuilt into its linear layers and
scored as the run's own evaluation scores (pffbench.ff.label_goodness: for each label, the goodness summed
over the scored layers; argmax), for several sets of scored layers.  Where a full-length row lands under the
paper, this says whether it is the fit (training rows against test rows) or the depth (which layers carry
the classification).  MNIST; the net's widths from the checkpoint's shapes (input 784).  Data:
``$PFFBENCH_DATA`` or ``--data-dir``.  Output: one line per (rows, scored layers), accuracy in %.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pffbench import data, ff  # noqa: E402

SCORED = [(1, 2, 3), (0, 1, 2, 3), (0,), (1,), (2,), (3,)]


def linears_of(state: dict, input_width: int = 784) -> list[torch.nn.Linear]:
    """The layers of an All-Layers checkpoint's ``carry`` ({slot: flat weight then bias}); ValueError if a
    slot's length is not in x out + out for the width before it and a whole out."""
    layers, width = [], input_width
    for slot in sorted(state["carry"]):
        flat = state["carry"][slot].detach().float()
        out, rest = divmod(flat.numel(), width + 1)
        if rest:
            raise ValueError(f"layer {slot}: {flat.numel()} values are not a {width}-input layer's weights and bias")
        layer = torch.nn.Linear(width, out)
        layer.weight.data, layer.bias.data = flat[:out * width].view(out, width).clone(), flat[out * width:].clone()
        layers.append(layer)
        width = out
    return layers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tools/pff_checkpoint_scores.py", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a rank's .pt file of an All-Layers Goodness run's checkpoint")
    p.add_argument("--train-rows", type=int, default=10000, help="training rows scored (default %(default)s)")
    p.add_argument("--data-dir", default=os.environ.get("PFFBENCH_DATA"))
    opts = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        state = torch.load(opts.checkpoint, weights_only=False, map_location="cpu")
        layers = linears_of(state)
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        print(f"pff_checkpoint_scores: error: {opts.checkpoint}: {error}", file=sys.stderr)
        return 2
    mnist = data.load_dataset("mnist", opts.data_dir or data.default_data_dir())
    rows = [("test", mnist.x_test, mnist.y_test),
            (f"train[:{opts.train_rows}]", mnist.x_train[:opts.train_rows], mnist.y_train[:opts.train_rows])]
    print(f"{os.path.basename(os.path.dirname(opts.checkpoint))}: layers {[lin.out_features for lin in layers]}")
    print(f"{'rows':<16} {'scored layers':<14} {'accuracy[%]':>11}")
    for name, x, y in rows:
        for scored in SCORED:
            if max(scored) < len(layers):
                print(f"{name:<16} {','.join(map(str, scored)):<14} {100 * ff.accuracy(layers, x, y, 10, scored):11.2f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
