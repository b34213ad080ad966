"""The registry of variants: everything that makes a variant, in one place.

The command line's choices (core/cli.py), the validation (core/validate.py),
the baselines the study draws dashed (study/analysis.py, plot.py), which
variants stop cleanly on a signal (run.py) and where each one's train() lives
all derive from ``VARIANTS``.  A new schedule is one more entry here and a
module with ``train(config, world, shape, dataset, on_epoch) -> TrainResult``.
"""
from __future__ import annotations

from dataclasses import dataclass

# What ranks agree on, and when: "epoch" = one allreduce at every epoch boundary (the losses and flags of
# the pipeline and of the backprop baselines); "chapters" = a lagged, non-blocking agreement after every round of chapters (the PFF wavefronts);
# None = no agreement: SIGTERM/SIGINT keep their default effect (the job ends at once).
AGREEMENTS = ("epoch", "chapters", None)


@dataclass(frozen=True)
class Variant:
    """One variant.  Which flags it takes follows from its family
    (core/validate.py): the PFF flags (--neg, --classifier, --splits, --shards,
    --partition, ...) only the "pff" family's, which evaluate at the end only
    (no --eval-every); --checkpoint-dir/--resume and --inject-nan as the
    fields below say."""
    name: str
    family: str          # "pipeline", "pff" (the paper's variants) or "backprop" (the baselines)
    module: str          # its train(config, world, shape, dataset, on_epoch)
    summary: str
    agreement: str | None = "epoch"
    checkpointable: bool = True   # --checkpoint-dir / --resume
    checks_finite: bool = True    # stops on a non-finite loss or layer (what --inject-nan tests)
    traced: bool = True           # records --trace (every variant does)
    microbatched: bool = False    # takes --microbatches (torch's pipeline schedules)
    objective: str | None = "ff"  # its local learning rule unless --objective says (None: backprop, no rule)

    @property
    def baseline(self) -> bool:
        """Backprop on the same MLP: what the FF variants are measured against."""
        return self.family == "backprop"

    @property
    def pff(self) -> bool:
        """Takes the paper's PFF flags (--neg, --classifier, --splits, --shards, ...)."""
        return self.family == "pff"


_PFF = "pffbench.schedules.pff."
_BACKPROP = "pffbench.schedules.backprop."  # one epoch loop for all of them: schedules/backprop/loop.py
VARIANTS = {v.name: v for v in (
    Variant("pipeline", "pipeline", "pffbench.schedules.pipeline.schedule",
            "layers pipelined over ranks, activations travel"),
    Variant("single-layer", "pff", _PFF + "single_layer", "rank i trains layer i, chapter by chapter",
            agreement="chapters"),
    Variant("all-layers", "pff", _PFF + "all_layers", "chapters round-robin over ranks, a wavefront",
            agreement="chapters"),
    Variant("federated", "pff", _PFF + "federated", "All-Layers on private shards, layers averaged",
            agreement="chapters"),
    Variant("perf-opt", "pff", _PFF + "all_layers", "All-Layers x --objective local-softmax (a softmax head "
            "per layer)", agreement="chapters", objective="local-softmax"),
    Variant("backprop", "backprop", _BACKPROP + "data_parallel", "the same MLP by backprop, one process",
            checks_finite=False, objective=None),
    Variant("dp-backprop", "backprop", _BACKPROP + "data_parallel",
            "data-parallel backprop, gradients allreduced over MPI", checks_finite=False, objective=None),
    Variant("ddp", "backprop", _BACKPROP + "ddp", "data-parallel backprop, torch DistributedDataParallel",
            checks_finite=False, objective=None),
    Variant("gpipe", "backprop", _BACKPROP + "torch_pipeline",
            "pipeline-parallel backprop, torch.distributed.pipelining's GPipe", checks_finite=False, objective=None,
            microbatched=True),
    Variant("1f1b", "backprop", _BACKPROP + "torch_pipeline",
            "pipeline-parallel backprop, torch.distributed.pipelining's 1F1B", checks_finite=False, objective=None,
            microbatched=True),
)}
BASELINES = tuple(name for name, v in VARIANTS.items() if v.baseline)
AGREEING = tuple(name for name, v in VARIANTS.items() if v.agreement is not None)
