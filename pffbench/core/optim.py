"""The one optimizer every trainer in pffbench steps with: Adam, fused.

torch.optim.Adam's default (the foreach kernels) costs as much as the matmuls it follows at batch 64: on a
2000x2000 layer with a 10-class head, one step took 25.8 ms unfused against 3.5 ms fused, and the whole
training step 37.6 ms against 16.8 ms (1 thread, Intel Xeon with AVX-512, torch 2.13; docs/measurements.md).
Every layer, head, block and backprop stage therefore makes its optimizer here, so none falls back to the
slow default by omission (tests/unit/test_optim.py checks each rule's).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch


def adam(params: Iterable[torch.Tensor] | Iterable[dict], lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr, fused=True)``: tensors, or param groups (dicts) as torch takes them.

    A group may carry ``lr_scale``: set_lr gives it ``lr * lr_scale`` (ff/layer.py's scaled weights)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate to ``lr`` (times the group's ``lr_scale``, where it has one: a checkpoint's
    groups from before lr_scale have none and take ``lr``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def load_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, the optimizer staying fused: torch restores each saved group's
    settings, so a checkpoint written by an unfused Adam (before every trainer made its optimizer here)
    would otherwise resume on the slow kernel."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None
