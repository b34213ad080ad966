"""The registry of variants: everything that makes a variant, in one place.

The command line's choices (launch/cli.py), the validation (launch/validate.py),
the baselines the study draws dashed (analysis/analysis.py, plot.py), which
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
    (launch/validate.py): the PFF flags (--neg, --classifier, --splits, --shards,
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
    # the ranks it runs on, for a net of L hidden layers: "any"; "stage" (a stage of layers per rank: p <= L);
    # "layer" (one rank per layer, or one rank: p in (1, L)); "one" (one process).  launch/validate.py says why
    # not in words, perfmodel/predict.py (runs_on) which p to draw
    ranks: str = "any"
    # how pffbench.perfmodel simulates it (perfmodel/predict.py): "pipeline", "wavefront", "single-layer",
    # "federated", "data-parallel", "ddp", "torch-pipeline"
    program: str = "pipeline"
    # what its timing's "sync" column holds, as the end-of-run summary names it: (column, what it is)
    sync: tuple[str, str] = ("sync", "the ranks' agreement at epoch or chapter boundaries")
    shares: str = ""  # how p > 1 ranks that each hold every layer share the work (the start line says it)
    # trains through a torch.distributed group (schedules/backprop/process_group.py): NCCL on GPUs, which needs
    # a GPU per rank (run.py refuses fewer in one line)
    torch_group: bool = False

    @property
    def own_heads(self) -> bool:
        """Every layer trains with its own softmax head (Performance-Optimized), no goodness: its own rule is
        local-softmax (learn/rules/local_softmax.py), as perfmodel/calibrate.py reads it."""
        return self.objective == "local-softmax"

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
_ALLREDUCE = ("allreduce", "the wait for the gradient allreduce (and the epoch boundary's agreement)")
# a torch pipelining step's time outside its own compute: the bubble and gloo's send/recv between stages
_BUBBLE = ("bubble+p2p", "a step's time outside this stage's compute: the pipeline bubble and the gloo "
                         "send/recv of activations and gradients")
VARIANTS = {v.name: v for v in (
    Variant("pipeline", "pipeline", "pffbench.schedules.pipeline.schedule",
            "layers pipelined over ranks, activations travel", ranks="stage"),
    Variant("single-layer", "pff", _PFF + "single_layer", "rank i trains layer i, chapter by chapter",
            agreement="chapters", ranks="layer", program="single-layer"),
    Variant("all-layers", "pff", _PFF + "all_layers", "chapters round-robin over ranks, a wavefront",
            agreement="chapters", program="wavefront", shares="chapters round-robin"),
    Variant("federated", "pff", _PFF + "federated", "All-Layers on private shards, layers averaged",
            agreement="chapters", program="federated",
            shares="each on its own data shard, layers averaged after every chapter"),
    Variant("perf-opt", "pff", _PFF + "all_layers", "All-Layers x --objective local-softmax (a softmax head "
            "per layer)", agreement="chapters", objective="local-softmax", program="wavefront",
            shares="chapters round-robin"),
    Variant("backprop", "backprop", _BACKPROP + "data_parallel", "the same MLP by backprop, one process",
            checks_finite=False, objective=None, ranks="one", program="data-parallel"),
    Variant("dp-backprop", "backprop", _BACKPROP + "data_parallel",
            "data-parallel backprop, gradients allreduced over MPI", checks_finite=False, objective=None, program="data-parallel",
            sync=_ALLREDUCE, shares="each minibatch split over the ranks"),
    Variant("ddp", "backprop", _BACKPROP + "ddp", "data-parallel backprop, torch DistributedDataParallel",
            checks_finite=False, objective=None, program="ddp", sync=_ALLREDUCE, shares="each minibatch split over the ranks",
            torch_group=True),
    Variant("gpipe", "backprop", _BACKPROP + "torch_pipeline",
            "pipeline-parallel backprop, torch.distributed.pipelining's GPipe", checks_finite=False, objective=None,
            microbatched=True, ranks="stage", program="torch-pipeline", sync=_BUBBLE, torch_group=True),
    Variant("1f1b", "backprop", _BACKPROP + "torch_pipeline",
            "pipeline-parallel backprop, torch.distributed.pipelining's 1F1B", checks_finite=False, objective=None,
            microbatched=True, ranks="stage", program="torch-pipeline", sync=_BUBBLE, torch_group=True),
)}
BASELINES = tuple(name for name, v in VARIANTS.items() if v.baseline)
AGREEING = tuple(name for name, v in VARIANTS.items() if v.agreement is not None)
