"""The one configuration object: every setting of a run, with its default.

Each field's metadata says what the setting is for: ``computes=False`` marks
the settings that do not change what is computed (the weights): where data
and output go, threads, device, links, tracing, evaluation frequency,
reliability and test hooks.  ``times=True`` marks those of them that change
the measured times.  ``computing_settings`` (what a checkpoint must match)
and ``case_settings`` (what runs must share to be repetitions of one case in
pffbench.analysis.analysis) derive from it.  The command line is launch/cli.py,
the validation launch/validate.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

CLASSIFIERS = ("goodness", "softmax")
DEVICES = ("cpu", "cuda")
TRANSPORTS = ("auto", "p2p")
DEFAULT_OUT = "results/pffbench.h5"


class UsageError(Exception):
    """Bad user input: reported as one line, exit code 2 on every rank."""


def one_line(text: str) -> str:
    """``text`` with newlines and other control characters escaped: a user's
    argv (or a path in a message) cannot split the one-line error."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _incidental(default, times: bool = False):
    """A setting that does not change what is computed (``times``: but changes how long it takes)."""
    return field(default=default, metadata={"computes": False, "times": times})


@dataclass
class Config:
    variant: str = "pipeline"
    objective: str | None = None  # the local learning rule (pffbench/learn/rules); None: the variant's own
    dataset: str = "mnist"
    data_dir: str | None = _incidental(None)
    download: bool = _incidental(False)
    validation: int = 0  # rows held out of the training set and evaluated on instead of the test set (tune)
    layers: tuple[int, ...] = (500, 500, 500, 500)  # with --conv: the dense layers after the last block
    conv: tuple[int, ...] | None = None  # channels of each convolutional block (learn/nets/conv.py); None: an MLP
    # each hidden layer's cost for the pipeline's partition (probes/layer_costs.py measures them); (): modelled.
    # It changes no weight, but which rank holds which layer: a checkpoint's layout, so resume compares it
    layer_costs: tuple[int, ...] = ()
    augment: bool = False  # random crop (4 pixels of zero padding) and flip of each training image (learn/augment.py)
    epochs: int = 4
    batch_size: int = 64
    lr: float = 3e-3
    threshold: float = 1.0
    sharpness: float = 20.0
    norm: str = "rms"  # an FF layer's input: unit RMS or unit length (ff.layer.input_scale)
    cooldown: float = 0.5
    seed: int = 0
    threads: int = _incidental(0, times=True)
    device: str = _incidental("cpu", times=True)
    transport: str = _incidental("auto", times=True)
    eval_every: int = _incidental(0)
    eval_every_steps: int = _incidental(0)
    target_accuracy: float | None = _incidental(None)
    stop_at_target: bool = _incidental(False, times=True)  # a shorter run, the same steps up to its end
    microbatches: int = 4  # gpipe, 1f1b: schedules/backprop/torch_pipeline.py
    score_layers: tuple[int, ...] | None = None
    out: str = _incidental(DEFAULT_OUT)
    name: str | None = _incidental(None)
    model_out: str | None = _incidental(None)
    trace: bool = _incidental(False)
    quiet: bool = _incidental(False)
    # the paper's PFF variants (issue 3); see pffbench/schedules/pff/
    neg: str = "random"
    classifier: str = "goodness"
    splits: int = 0
    softmax_lr: float = 1e-3
    shards: int = 0
    partition: str = "iid"
    classes_per_shard: int = 2
    preset: str | None = None
    # reliability (issue 5); see pffbench/reliability/
    peer_timeout: float = _incidental(600.0)
    checkpoint_dir: str | None = _incidental(None)
    resume: bool = _incidental(False)
    inject_fault: tuple[int, int] | None = _incidental(None)  # hidden test flags: RANK:EPOCH
    inject_hang: tuple[int, int] | None = _incidental(None)
    inject_nan: tuple[int, int] | None = _incidental(None)


# settings added after runs were stored: a stored config without one ran at its default (case_settings)
COMPUTING_SINCE_STORED = ("norm", "conv", "augment")
COMPUTING = tuple(f.name for f in dataclasses.fields(Config) if f.metadata.get("computes", True))
INCIDENTAL = tuple(f.name for f in dataclasses.fields(Config) if not f.metadata.get("computes", True))
TIMING = tuple(f.name for f in dataclasses.fields(Config) if f.metadata.get("times", False))


def hidden_layers(config) -> int:
    """The hidden layers of a Config's net: its convolutional blocks and its dense layers (the softmax head
    of the backprop baselines not counted)."""
    return len(config.conv or ()) + len(config.layers)


def computing_settings(config: dict) -> dict:
    """The settings of ``config`` (a Config as a dict) that change what is computed."""
    return {k: v for k, v in config.items() if k in COMPUTING}


def case_settings(config: dict) -> dict:
    """The settings runs must share to be repetitions of one measurement: what
    is computed, plus what changes the times, except threads (a case's key of
    its own, beside the ranks).  Settings a stored config has and this Config
    has not are kept (a run of another version is its own case); settings it
    lacks had their defaults then (a run stored before --norm existed ran
    with --norm rms, one stored before --conv an MLP, one before --augment
    without augmentation)."""
    known = {f.name for f in dataclasses.fields(Config)}
    config = {**{f.name: f.default for f in dataclasses.fields(Config) if f.name in COMPUTING_SINCE_STORED
                 and f.name not in config}, **config}
    return {k: v for k, v in config.items() if k in COMPUTING or (k in TIMING and k != "threads") or k not in known}
