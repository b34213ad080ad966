"""Validation of a Config: one line (UsageError) if it cannot run.

Runs before any MPI communication, so every rank reaches the same verdict
from the same argv and exits with the same code.  What a variant accepts
comes from its entry in core/variants.py.
"""
from __future__ import annotations

import math

from ..core.config import Config, UsageError, hidden_layers
from ..core.variants import VARIANTS
from ..core.words import plural


def validate(config: Config, world_size: int | None = None) -> None:
    """Raise UsageError with one line if the configuration cannot run
    (``world_size`` None: what can be checked without knowing the ranks)."""
    variant = VARIANTS[config.variant]
    _check_limits(config)
    _check_reliability(config, variant, world_size)
    _check_values(config)
    _check_target(config, variant)
    rule = config.objective or variant.objective  # the variant's own rule where --objective is not given
    if config.norm != "rms" and rule == "cwcomp":
        raise UsageError(f"--norm {config.norm} applies to goodness-trained FF layers on normalized inputs; cwcomp's "
                         "conv blocks see the images as they are and normalize with GroupNorm")
    if config.norm != "rms" and (variant.baseline or rule == "local-softmax"):
        what = config.variant if variant.baseline else f"{config.variant} x local-softmax"
        raise UsageError(f"--norm {config.norm} applies to goodness-trained FF layers; {what} trains its "
                         "layers by backprop on RMS-normalized inputs")
    _check_objective(config, variant)
    _check_conv(config, variant, rule)
    _check_augment(config, variant, rule)
    _check_layer_costs(config, variant)
    if variant.baseline:
        _validate_baseline(config, world_size)
        return
    _validate_pff(config, world_size)
    depth = hidden_layers(config)
    if world_size is not None and variant.family == "pipeline" and world_size > depth:
        raise UsageError(f"{world_size} ranks but only {plural(depth, 'layer')}{_counted(config)}: "
                         f"use at most {plural(depth, 'rank')} or more {_deeper(config)}")


def _counted(config: Config) -> str:
    """What the layers counted are, where a conv net has blocks among them."""
    return " (convolutional blocks and dense layers)" if config.conv else ""


def _deeper(config: Config) -> str:
    return "--conv blocks or --layers" if config.conv else "--layers"


CONV_RULES = ("local-softmax", "cwcomp")  # the rules with a conv path (learn/rules: make_conv_layer, ConvSource)
CONV_SCHEDULES = "the backprop baselines (backprop, dp-backprop, ddp, gpipe, 1f1b) and the FF variants (pipeline, " \
                 "single-layer, all-layers, federated, perf-opt) with --objective local-softmax or cwcomp"


def _check_layer_costs(config: Config, variant) -> None:
    """--layer-costs: one positive cost per hidden layer, for a schedule that splits its layers into blocks."""
    if not config.layer_costs:
        return
    if not (variant.family == "pipeline" or variant.microbatched):
        raise UsageError(f"--layer-costs partitions the layers of the pipeline, gpipe and 1f1b over ranks; "
                         f"--variant {config.variant} does not split its layers into blocks")
    depth = hidden_layers(config)
    if len(config.layer_costs) != depth or any(cost <= 0 for cost in config.layer_costs):
        raise UsageError(f"--layer-costs needs {plural(depth, 'positive cost')}, one per hidden layer"
                         f"{_counted(config)}, got {','.join(map(str, config.layer_costs))}")


def _check_conv(config: Config, variant, rule: str | None) -> None:
    """--conv: the schedules and rules that train a conv net so far (issue 24); cwcomp trains conv blocks only."""
    if config.conv is None:
        if rule == "cwcomp":
            raise UsageError("--objective cwcomp trains convolutional blocks only (a channel group per class): "
                             "give --conv C1,C2,...")
        if not config.layers:
            raise UsageError("--layers needs at least one width (an MLP without --conv)")
        return
    if not config.conv:
        raise UsageError("--conv needs at least one block's channels, e.g. --conv 16,32")
    if any(channels <= 0 for channels in config.conv):
        raise UsageError(f"--conv channels must be positive, got {','.join(map(str, config.conv))}")
    if rule == "cwcomp" and config.layers:
        raise UsageError(f"--objective cwcomp trains convolutional blocks only, not yet dense layers after them: "
                         f"drop --layers {','.join(map(str, config.layers))}")
    if variant.baseline or rule in CONV_RULES:
        return
    raise UsageError(f"--conv runs with {CONV_SCHEDULES}; not with --variant {config.variant} --objective {rule}")


AUGMENT_SCHEDULES = "the backprop baselines (backprop, dp-backprop, ddp, gpipe, 1f1b) and --variant pipeline " \
                    "--objective local-softmax or cwcomp"


def _check_augment(config: Config, variant, rule: str | None) -> None:
    """--augment: the schedules whose training minibatches are augmented so far (learn/augment.py).  The
    others make their minibatches elsewhere (the ff rule's label-embedded positive and negative pairs, scff's
    [x, x'] pairs, the PFF schedules' own loops): refused, not silently left unaugmented."""
    if not config.augment or variant.baseline or (variant.family == "pipeline" and rule in CONV_RULES):
        return
    what = f"--variant pipeline --objective {rule}" if variant.family == "pipeline" else f"--variant {config.variant}"
    raise UsageError(f"--augment runs with {AUGMENT_SCHEDULES}; not yet with {what}")


def validate_shape(config: Config, shape) -> None:
    """After the data is loaded, on every rank (each knows ``shape``, core/types.Shape): UsageError if the
    net cannot run on these rows (--conv on vectors, or on images its pooling shrinks below a pixel), or
    --augment has no images to crop and flip, or cwcomp's blocks cannot split their channels into one group
    per class."""
    image = tuple(shape.image_shape or ())
    if config.augment and len(image) != 3:
        raise UsageError(f"{config.dataset}: --augment crops and flips images, and its rows are vectors "
                         f"({shape.num_features} values)")
    if config.conv is None:
        return
    from ..learn.nets.conv import ConvNet
    problem = ConvNet.of(config, shape).problem()
    if problem:
        raise UsageError(f"{config.dataset}: {problem}")
    if (config.objective or VARIANTS[config.variant].objective) == "cwcomp" and \
            any(channels % shape.num_classes for channels in config.conv):
        raise UsageError(f"{config.dataset}: --objective cwcomp gives each of the {shape.num_classes} classes a "
                         f"group of channels in every block: --conv channels must be multiples of "
                         f"{shape.num_classes}, got {','.join(map(str, config.conv))}")


def _check_limits(config: Config) -> None:
    """Finite numbers, and sizes pffbench can run."""
    floats = {"--lr": config.lr, "--threshold": config.threshold, "--sharpness": config.sharpness,
              "--cooldown": config.cooldown, "--softmax-lr": config.softmax_lr, "--peer-timeout": config.peer_timeout}
    for flag, value in floats.items():
        if not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number, got {value}")
    if not config.peer_timeout > 0:
        raise UsageError(f"--peer-timeout must be positive, got {config.peer_timeout}")
    limits = {"--epochs": (config.epochs, 10 ** 6), "--batch-size": (config.batch_size, 2 ** 31 - 1),
              "--threads": (config.threads, 4096), "--shards": (config.shards, 10 ** 6),
              "--classes-per-shard": (config.classes_per_shard, 10 ** 4), "--splits": (config.splits, 10 ** 6),
              "--layers widths": (max(config.layers, default=0), 10 ** 6),
              "--conv channels": (max(config.conv or (), default=0), 10 ** 5)}
    for flag, (value, limit) in limits.items():
        if value > limit:
            raise UsageError(f"{flag} {value} is beyond what pffbench can run (at most {limit})")
    if config.seed >= 2 ** 32:
        raise UsageError(f"--seed must be below 2**32, got {config.seed}")


def _check_reliability(config: Config, variant, world_size: int | None) -> None:
    """Checkpoints and the hidden fault-injection flags."""
    if config.resume and not config.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir DIR (where the checkpoints are)")
    if config.checkpoint_dir is not None and not variant.checkpointable:
        raise UsageError(f"--checkpoint-dir and --resume work with the FF variants, not {config.variant}")
    if config.inject_nan is not None and not variant.checks_finite:
        raise UsageError(f"--inject-nan tests the FF variants' checks for non-finite layers; {config.variant} has none")
    for flag in ("inject_fault", "inject_hang", "inject_nan"):
        spec = getattr(config, flag)
        if spec is None:
            continue
        rank, epoch = spec
        if epoch >= config.epochs or (world_size is not None and rank >= world_size):
            raise UsageError(f"--{flag.replace('_', '-')} {rank}:{epoch}: no such rank or epoch "
                             f"({world_size or '?'} ranks, {config.epochs} epochs)")


def _check_values(config: Config) -> None:
    """Every variant's numbers in their ranges."""
    positive = {"--epochs": config.epochs, "--batch-size": config.batch_size}
    for flag, value in positive.items():
        if value <= 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    if any(width <= 0 for width in config.layers):
        raise UsageError(f"--layers widths must be positive, got {','.join(map(str, config.layers))}")
    if not config.lr > 0:
        raise UsageError(f"--lr must be positive, got {config.lr}")
    if not config.threshold > 0:
        raise UsageError(f"--threshold must be positive, got {config.threshold}")
    if not config.sharpness > 0:
        raise UsageError(f"--sharpness must be positive, got {config.sharpness}")
    if not 0 <= config.cooldown <= 1:
        raise UsageError(f"--cooldown must be in [0, 1], got {config.cooldown}")
    if config.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {config.threads}")
    if config.validation < 0:
        raise UsageError(f"--validation must be >= 0, got {config.validation}")
    if config.eval_every < 0:
        raise UsageError(f"--eval-every must be >= 0, got {config.eval_every}")
    if config.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {config.seed}")
    if config.score_layers is not None:
        bad = [i for i in config.score_layers if not 0 <= i < len(config.layers)]
        if bad:
            raise UsageError(f"--score-layers {bad} out of range for {plural(len(config.layers), 'layer')} (0-based)")


def _check_target(config: Config, variant) -> None:
    """--target-accuracy, --stop-at-target, --eval-every-steps: what each family can honour
    (instrument/target.py: a step for the baselines and the pipeline, the run for the PFF variants)."""
    if config.target_accuracy is not None and not 0 < config.target_accuracy <= 1:
        raise UsageError(f"--target-accuracy must be in (0, 1], got {config.target_accuracy}")
    if config.eval_every_steps < 0:
        raise UsageError(f"--eval-every-steps must be >= 0, got {config.eval_every_steps}")
    stepping = ", ".join(name for name, v in VARIANTS.items() if not v.pff)
    if config.eval_every_steps and variant.pff:
        raise UsageError(f"--eval-every-steps works with the pipeline and the backprop baselines ({stepping}); "
                         f"{config.variant} evaluates at the end of the run")
    if config.stop_at_target and config.target_accuracy is None:
        raise UsageError("--stop-at-target needs --target-accuracy A")
    if config.stop_at_target and variant.pff:
        raise UsageError(f"--stop-at-target works with the pipeline and the backprop baselines; {config.variant} "
                         "evaluates only at the end of the run")
    if config.stop_at_target and not (config.eval_every or config.eval_every_steps):
        raise UsageError("--stop-at-target needs evaluations before the end: --eval-every K (epochs) or "
                         "--eval-every-steps K")


def _check_objective(config: Config, variant) -> None:
    """--objective: a rule for the FF variants, with the flags that rule reads."""
    if config.objective is None:
        return
    if variant.baseline:
        raise UsageError(f"--objective picks the local learning rule of the FF variants; {config.variant} trains "
                         "by backprop")
    if config.variant == "perf-opt" and config.objective != "local-softmax":
        raise UsageError(f"perf-opt is all-layers with --objective local-softmax: for {config.objective}, use "
                         f"--variant all-layers --objective {config.objective}")
    if config.objective == "ff":
        return
    d = Config()
    used = [flag for flag, changed in (("--neg", config.neg != d.neg), ("--classifier", config.classifier != d.classifier),
                                       ("--score-layers", config.score_layers is not None)) if changed]
    if used:
        raise UsageError(f"{', '.join(used)}: settings of the ff rule (wrong-label negatives, goodness or softmax "
                         f"classifier); --objective {config.objective} has its own")


def _validate_pff(config: Config, world_size: int | None) -> None:
    chapters = config.splits or config.epochs
    if config.splits < 0:
        raise UsageError(f"--splits must be >= 0, got {config.splits}")
    if config.epochs % chapters:
        raise UsageError(f"--splits {config.splits} does not divide --epochs {config.epochs}")
    if not config.softmax_lr > 0:
        raise UsageError(f"--softmax-lr must be positive, got {config.softmax_lr}")
    if config.shards < 0 or config.classes_per_shard < 1:
        raise UsageError("--shards must be >= 0 and --classes-per-shard >= 1")
    if VARIANTS[config.variant].family == "pipeline":
        if config.neg != "random" or config.classifier != "goodness" or config.splits:
            raise UsageError("the pipeline variant makes random negatives per minibatch and classifies by goodness: "
                             "--neg, --classifier and --splits need a PFF --variant (single-layer, all-layers, ...)")
        return
    if config.eval_every:
        raise UsageError(f"--eval-every works with the pipeline variant only; {config.variant} evaluates at the end")
    if world_size is None:
        return
    layers, entry = hidden_layers(config), VARIANTS[config.variant]  # the rank rules: the registry's facts
    if entry.ranks == "layer" and world_size not in (1, layers):
        raise UsageError(f"{config.variant} needs one rank per layer ({layers}{_counted(config)}) or 1 rank (its "
                         f"sequential twin), got {world_size} ranks")
    if entry.program == "wavefront" and world_size > chapters:
        raise UsageError(f"{world_size} ranks but only {plural(chapters, 'chapter')} (--splits): chapters go "
                         f"round-robin, so use at most {plural(chapters, 'rank')}")
    if entry.program == "federated" and world_size > (config.shards or world_size):
        raise UsageError(f"{world_size} ranks but only {plural(config.shards, 'shard')} (--shards): every rank "
                         f"needs a shard")


def _validate_baseline(config: Config, world_size: int | None) -> None:
    """backprop is one process (dp-backprop is its data-parallel form); the
    PFF flags mean nothing to either."""
    d = Config()
    pff_flags = {"--neg": config.neg != d.neg, "--classifier": config.classifier != d.classifier,
                 "--splits": config.splits != d.splits, "--shards": config.shards != d.shards,
                 "--partition": config.partition != d.partition}
    used = [flag for flag, changed in pff_flags.items() if changed]
    if used:
        raise UsageError(f"{', '.join(used)}: PFF flags, meaningless for {config.variant} "
                         f"({'a conv net' if config.conv else 'an MLP'} with a softmax head trained by backprop)")
    if config.microbatches != d.microbatches and not variant_takes_microbatches(config.variant):
        raise UsageError(f"--microbatches is for the {' and '.join(MICROBATCHED)} variants, not {config.variant}")
    if variant_takes_microbatches(config.variant):
        _validate_torch_pipeline(config, world_size)
    entry = VARIANTS[config.variant]  # the rank rules: the registry's facts
    if world_size is not None and entry.ranks == "one" and world_size > 1:
        raise UsageError(f"{config.variant} runs in one process, got {world_size} ranks: "
                         f"use --variant dp-backprop for data-parallel backprop over MPI")
    if world_size is not None and entry.program in ("data-parallel", "ddp") and world_size > config.batch_size:
        raise UsageError(f"{world_size} ranks but --batch-size {config.batch_size}: "
                         "every rank needs a row of each minibatch")


MICROBATCHED = tuple(name for name, v in VARIANTS.items() if v.microbatched)


def variant_takes_microbatches(name: str) -> bool:
    return VARIANTS[name].microbatched


def _validate_torch_pipeline(config: Config, world_size: int | None) -> None:
    """gpipe, 1f1b: microbatches the library can schedule, a stage per rank."""
    m = config.microbatches
    if m < 1:
        raise UsageError(f"--microbatches must be >= 1, got {m}")
    if config.batch_size % m:
        raise UsageError(f"--microbatches {m} must divide --batch-size {config.batch_size}: "
                         "the library's microbatches must all have one shape")
    depth = hidden_layers(config)
    if world_size is not None and world_size > depth:
        raise UsageError(f"{world_size} ranks but only {plural(depth, 'hidden layer')}{_counted(config)}: "
                         f"use at most {plural(depth, 'rank')} or more {_deeper(config)}")
    if world_size is not None and m < world_size:
        raise UsageError(f"--microbatches {m} < {world_size} ranks: torch's {config.variant} schedule needs at "
                         "least one microbatch per stage")
