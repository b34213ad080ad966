"""The registry of local learning rules (``--objective``), like the registry
of variants (core/variants.py): a rule says what one layer learns from, the
schedule (pipeline, Single-Layer, All-Layers, Federated) where and when.

Every rule is one small pure-torch module offering the same names:

- ``NEEDS_NEGATIVES``: whether its inputs carry negative data made by the
  caller (FF's wrong labels); a rule that makes its own (SCFF) says False;
- ``input_width(num_features)``: the first layer's input width;
- ``message_rows(n)``: rows of activity a minibatch of ``n`` examples makes
  per layer (what travels to the next layer is [message_rows(n), width]);
- ``make_layer(index, dims, num_classes, config, device)``: layer ``index``
  (its Linear keyed by (seed, index) only, so every partition starts alike);
- ``step(layer, x, side, n) -> (activity, loss)``: one optimizer step on the
  layer's input ``x`` [rows, dims[index]] (``side`` [rows, 1]: what travels
  beside it, e.g. the labels); returns the normalized activity of the
  step's own forward pass (before the update) and the loss (0-d tensor);
- ``Source(dataset, config, device, sizes)``: the first layer's minibatches
  (``start_epoch()``, ``batch(b) -> (x, side)``, ``generator``);
- ``accuracy(layers, heads, dataset, config, device) -> float``: its
  classifier's test accuracy from the trained Linears (and auxiliary heads);
- ``health(config) -> (threshold, inputs)``: how the collapse check
  (schedules/ending.py, ff/health.py) sees its layers: the goodness
  threshold they train to (None: no goodness, dead units only) and the
  test rows as the first layer sees them (a function of x [n, d]; None: x
  with its true label embedded).

A rule that trains conv nets (``--conv``, learn/nets/conv.py; so far
local-softmax and cwcomp, in the pipeline) also offers
``make_conv_layer(index, net, config, device)`` (a layer with ``block`` or
``linear``, ``optimizer``, ``set_lr``, ``forward``, and ``head`` where it
has an auxiliary head), ``conv_costs(net)`` (each layer's FLOPs a row with
its loss: what the pipeline's partition balances), ``ConvSource`` (as
``Source``) and ``conv_accuracy(modules, heads, net, x, y, config,
device)`` (test rows and labels; ``heads`` None where its layers have none); launch/validate.py
refuses --conv with the others.  Their ``Source`` (local-softmax) and
``ConvSource`` also augment each training minibatch under ``--augment``
(learn/augment.py), which launch/validate.py refuses with the other rules.
cwcomp trains conv blocks only: its ``make_layer`` and ``accuracy`` refuse
(launch/validate.py refuses it without --conv first).

The ff rule is today's Forward-Forward (ff/): the pipeline and the PFF
schedules keep their tuned paths for it; the other rules run through the
names above (the pipeline) or a Kind (schedules/pff/kinds.py).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    name: str
    module: str
    summary: str
    source: str


_HERE = "pffbench.learn.rules."
RULES = {r.name: r for r in (
    Rule("ff", _HERE + "ff", "Hinton's goodness, label in the input, wrong-label negatives",
         "Hinton 2022, The Forward-Forward Algorithm"),
    Rule("local-softmax", _HERE + "local_softmax",
         "a softmax auxiliary head per layer, trained with its layer by local backprop, no negatives",
         "Aktemur et al. 2024 (arXiv 2404.08573), Performance-Optimized PFF"),
    Rule("scff", _HERE + "scff", "self-contrastive FF: [x, x] positive, [x, x'] negative, no label; linear read-out",
         "Chen, Liu, Laydevant, Grollier, Nature Communications 2025 (arXiv 2409.11593)"),
    Rule("cwcomp", _HERE + "cwcomp", "channel-wise competitive FF for conv blocks: a channel group per class, "
         "cross-entropy of the groups' goodness, no negatives, no label in the input",
         "Papachristodoulou, Kyrkou, Timotheou, Theocharides, AAAI 2024 (arXiv 2312.12668)"),
)}
OBJECTIVES = tuple(RULES)


def objective_of(config) -> str | None:
    """The rule a run trains with: ``--objective``, else its variant's default
    (ff; local-softmax for perf-opt; None for the backprop baselines)."""
    from ...core.variants import VARIANTS
    return config.objective or VARIANTS[config.variant].objective


def module(name: str):
    """The rule's module (see the module docstring for what it offers)."""
    return importlib.import_module(RULES[name].module)


def trained_module(layer):
    """The module a rule's layer trains (what is gathered, saved and poisoned by --inject-nan): a conv block
    (``block``) or a Linear (``linear``), without its auxiliary head."""
    return layer.block if hasattr(layer, "block") else layer.linear
