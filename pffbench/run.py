"""`python -m pffbench.run`: train a Forward-Forward net over MPI ranks and
append the run to an HDF5 results file.

    mpirun -n 4 python -m pffbench.run --layers 1000,1000,1000,1000
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import os
import sys
import time
import traceback
from datetime import datetime, timezone

if __name__ == "__main__":  # the run entry: before torch and MPI start (launch/preflight.py says why)
    from .launch import preflight
    preflight.before_libraries()

import numpy as np
import torch
from mpi4py import MPI

from .comm import guard
from .launch import command, console, preflight
from .launch.cli import parse_config
from .core.config import Config, UsageError, hidden_layers, one_line
from .core.types import Shape, TrainResult, batch_rows
from .launch.validate import validate, validate_shape
from .core.variants import VARIANTS
from .core.world import World, launch_mismatch
from .instrument import progress
from .instrument.timer import COLUMNS
from .reliability import checkpoint, faults
from .schedules import ending
from .schedules.ending import final_accuracy
from .store import checks, provenance, rescue, writer
from .store.format import ResultsError
from .store.atomic import atomic_write, describe
from .core import optim

EXIT_USAGE = 2
EXIT_NOT_RECORDED = 4  # the run trained but is not in --out (a rescue file holds it); 3 is a failed run
ABORT_GRACE_S = 0.5  # time the launcher gets to forward a traceback before the abort


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def install_abort_on_error(comm: MPI.Comm) -> None:
    """An uncaught exception on any rank prints that rank's traceback once and
    aborts the whole job, so no peer waits forever on a dead rank."""
    rank, host = comm.Get_rank(), MPI.Get_processor_name()

    def hook(kind, value, tb):
        text = "".join(traceback.format_exception(kind, value, tb))
        prefix = f"[rank {rank}] "
        sys.stderr.write("".join(prefix + line for line in text.splitlines(keepends=True)))
        # one line saying where: across nodes, which host's logs to read
        sys.stderr.write(f"{prefix}pffbench: rank {rank} on {host} failed ({kind.__name__}); aborting the job\n")
        sys.stderr.flush()
        # The launcher forwards a rank's stderr from a pipe; an abort can kill the forwarding
        # before it has read the traceback (seen once in CI: the job ended with no output at all).
        time.sleep(ABORT_GRACE_S)
        comm.Abort(1)
    sys.excepthook = hook


def load_data_on_root(config: Config, world: World):
    """Rank 0 loads the data; every rank learns its shape, or the one-line
    error that stops them all."""
    from .data import DataError, load_dataset, validation_split
    dataset, message = None, None
    if world.is_first:
        try:
            say = None if config.quiet else lambda line: print(f"pffbench: {line}", flush=True)
            dataset = load_dataset(config.dataset, config.data_dir, download=config.download, say=say)
            if config.validation:  # evaluate on rows held out of the training set, never the test set
                dataset = validation_split(dataset, config.validation)
            if dataset.num_features <= dataset.num_classes:
                message = f"{config.dataset}: {dataset.num_features} features leave no room for the label embedding"
        except DataError as error:
            message = str(error)
        shape = None if message else Shape.of(dataset)
    else:
        shape = None
    # the others sleep meanwhile (a blocking bcast would spin, taking cores from the loading); no time limit,
    # as a --download may take long
    guard.barrier(world.comm, "loading the data", timeout=float("inf"))
    shape, message = world.comm.bcast((shape, message), root=0)
    return dataset, shape, message


def summary_lines(config: Config, result: TrainResult, wall: float, attrs: dict) -> list[str]:
    """The end-of-run summary: accuracy, wall time, the time to --target-accuracy, and each rank's
    layers and shares of its wall time, the sync column named as what it holds for this variant
    (core/variants.py: the bubble and gloo traffic of gpipe/1f1b, ddp's allreduce, ...)."""
    timing = np.nansum(result.timing, axis=1)  # [ranks, columns]; a resumed run's earlier epochs are NaN
    col = {name: timing[:, i] for i, name in enumerate(COLUMNS)}
    sync, meaning = VARIANTS[config.variant].sync
    rows = progress.evaluated_on(config)  # "validation" under --validation
    lines = [f"{rows} accuracy {100 * final_accuracy(result):.2f}%   wall time {wall:.1f}s"]
    if attrs.get("target_accuracy") is not None:
        goal = f"target {rows} accuracy {100 * attrs['target_accuracy']:.2f}%"
        seconds = attrs.get("time_to_target", float("nan"))
        if np.isfinite(seconds):
            step = attrs.get("target_reached_step", -1)
            where = f"epoch {attrs['target_reached_epoch']}" + (f", step {step}" if step >= 0 else "")
            stopped = "; the run stopped there (--stop-at-target)" if attrs.get("stop_reason") else ""
            lines.append(f"{goal} reached after {seconds:.1f}s of training ({where}){stopped}")
        else:
            lines.append(f"{goal} not reached")
    columns = {"compute": ("compute",), "comm-wait": ("send_wait", "recv_wait"), "data": ("data",),
               sync: ("sync",), "eval": ("eval",), "idle": ("idle",)}
    widths = [max(len(name), 6) for name in columns]
    lines.append("rank  layers    " + "  ".join(f"{name:>{w}}" for name, w in zip(columns, widths)))
    for r, block in enumerate(result.blocks):
        total = col["wall"][r] or 1.0
        shares = [f"{100 * sum(col[n][r] for n in names) / total:.1f}%" for names in columns.values()]
        lines.append(f"{r:>4}  {console.block_text(block, hidden_layers(config)):<9} "
                     + "  ".join(f"{text:>{w}}" for text, w in zip(shares, widths)))
    lines.append(f"(% of each rank's wall time; {sync}: {meaning})")
    return lines


def prepare(config: Config, world: World):
    """Threads, the checks every rank must pass, the data on rank 0: (dataset, shape)."""
    # flush denormals to zero, before torch starts its threads: Adam's moments for weights whose gradient
    # is always zero (MNIST's blank border pixels, dead ReLUs) decay into the denormal range, where every
    # update of them is slow; measured 4 % off the FF step, with no effect on what is learnt
    torch.set_flush_denormal(True)
    torch.set_num_threads(config.threads or world.default_threads())
    message = world.missing_gpu(config.device, gpu_per_rank=VARIANTS[config.variant].torch_group) or world.comm.bcast(
        checks.output_problem(config, world.size) if world.is_first else None, root=0)
    if message:
        raise UsageError(message)
    if config.checkpoint_dir:
        console.already_finished(config, world)
    folder = writer.missing_folder(config.out) if world.is_first and not config.quiet else None
    if folder:
        print(f"pffbench: --out {config.out}: the folder {folder} does not exist; it will be created", flush=True)
    dataset, shape, message = load_data_on_root(config, world)
    if message:
        raise UsageError(message)
    validate_shape(config, shape)  # every rank knows the shape: the same verdict everywhere
    # torch imports torch._dynamo when it makes its first optimizer (~1 s): here, not on a schedule's clock
    optim.adam([torch.zeros(1, requires_grad=True)], 1e-3)
    if config.device == "cuda":  # the context, cuBLAS's set-up, the first kernels' loading: not on epoch 0's clock
        device = world.device(config.device)
        weight = torch.ones(64, 64, device=device, requires_grad=True)
        (weight @ weight).sum().backward()
        optim.adam([weight], 1e-3).step()
        torch.cuda.synchronize(device)
    return dataset, shape


def run(config: Config, world: World) -> TrainResult | None:
    """Train and record one run; returns rank 0's result (None elsewhere)."""
    dataset, shape = prepare(config, world)
    started, load_start = utc_now(), provenance.load_average()
    hostnames = world.hostnames
    threads = world.comm.gather(torch.get_num_threads(), root=0)
    masks = world.comm.gather(sorted(os.sched_getaffinity(0)), root=0)  # the cores each rank may run on
    quotas = world.comm.gather(world.cpu_quota, root=0)
    reporter = console.start_progress(config, world, shape, len(dataset.y_test) if world.is_first else 0)
    if world.is_first:
        console.answer_signals(config, reporter)
    guard.barrier(world.comm, "set-up")
    t0 = time.perf_counter()
    if reporter:
        reporter.start()
    schedule = importlib.import_module(VARIANTS[config.variant].module)
    try:
        result, status, stopped = schedule.train(config, world, shape, dataset, on_epoch=reporter), "complete", None
    except faults.RunStopped as stop:  # every rank agreed to stop (signal, NaN): rank 0 records the partial run
        if not world.is_first:
            raise
        result, status, stopped = stop.result, stop.status, stop
    finally:
        if reporter:
            reporter.uninstall()
    wall = time.perf_counter() - t0
    if not world.is_first:
        return None
    ending.check_health(result, dataset, config.lr, config.norm)  # after the clock: a forward pass over the test set
    arrays = {f"timing/{name}": result.timing[:, :, i] for i, name in enumerate(COLUMNS)}
    arrays.update({"loss": result.loss, "test_accuracy": result.test_accuracy, **result.arrays})
    attrs = {
        "variant": config.variant, "dataset": config.dataset, "config": dataclasses.asdict(config),
        "world_size": world.size, "hostnames": hostnames, "threads_per_rank": threads,
        "cpu_quota": quotas, "cpu_masks": masks,
        "layer_blocks": [[b.start, b.stop] for b in result.blocks], "dims": result.dims,
        "seed": config.seed, "final_test_accuracy": final_accuracy(result),
        "wall_time": wall, "minibatches_per_epoch": len(batch_rows(shape.num_train, config.batch_size)),
        "num_train": shape.num_train, "class_names": list(dataset.class_names),
        "start_utc": started, "end_utc": utc_now(), "load_avg_start": load_start,
        **writer.provenance(), **result.attrs,
    }
    if config.validation:  # what "test_accuracy" measured
        attrs["evaluated_on"] = f"validation: {config.validation} rows held out of the training set"
    return finish(config, result, arrays, attrs, status, stopped, wall)


def finish(config: Config, result: TrainResult, arrays: dict, attrs: dict, status: str, stopped, wall: float):
    """Rank 0: save the model (first: nothing the results writer does can lose it), record the run (a
    stopped one, then raise its stop), print the summary."""
    model_error = None
    if config.model_out and not stopped:
        model = model_contents(config, result, attrs["class_names"])
        try:
            save_model(model, config.model_out)
        except Exception as error:  # noqa: BLE001 (the run is still recorded, then this is said)
            model_error = f"--model-out: {describe(config.model_out, error)}; " + rescue_model(config, model)
    try:
        name, elsewhere = record(config, arrays, attrs, status), None
    except NotRecorded as error:  # saved elsewhere: say so last, after what else the run has to do
        name, elsewhere = None, error
    if stopped:
        if elsewhere:
            print(f"pffbench: error: {one_line(elsewhere)}", file=sys.stderr, flush=True)
        else:
            print(f"recorded the {status} run '{name}' in {config.out}", flush=True)
        raise stopped  # its own exit code (interrupted, failed)
    if config.checkpoint_dir:  # a --resume of this run has nothing left to do
        checkpoint.mark_finished(config, attrs["world_size"], name, config.out if name else None)
    for line in [] if config.quiet else summary_lines(config, result, wall, attrs):
        print(line)
    if elsewhere:
        raise NotRecorded(f"{model_error}; {elsewhere}") if model_error else elsewhere
    if not config.quiet:
        print(f"appended run '{name}' to {config.out}")
    if model_error:
        raise NotRecorded(model_error)
    return result


class NotRecorded(Exception):
    """The run could not be appended to --out; the message says where it went instead."""


def record(config: Config, arrays: dict, attrs: dict, status: str) -> str:
    """Append the run to --out and return its name.  If anything goes wrong
    with that after training (another job holding the file's lock past the
    timeout, a full disk, a damaged file, a value HDF5 refuses: any
    exception), the run goes to a file of its own (store/rescue.py) and
    NotRecorded says where: a finished run is never lost."""
    try:
        return writer.append_run(config.out, arrays, attrs, name=config.name, status=status)
    except Exception as error:  # noqa: BLE001 (whatever the writer raises, the run must survive it)
        problem = str(error) if isinstance(error, ResultsError) else \
            f"{config.out}: cannot append run: {type(error).__name__}: {one_line(error)}"
    try:
        path, name, changed = rescue.rescue_run(config.out, arrays, attrs, config.name, status)
    except Exception as error:  # noqa: BLE001
        raise NotRecorded(f"{problem}; the run could not be saved anywhere else either "
                          f"({type(error).__name__}: {one_line(error)})") from None
    kept = f" ({', '.join(changed)} kept as text)" if changed else ""
    raise NotRecorded(f"{problem}; run '{name}' is saved in {path} instead{kept}")


def model_contents(config: Config, result: TrainResult, class_names=()) -> dict:
    """What --model-out holds: the config, dims, what each label means
    (``class_names``: label i is the i-th name), layers and heads (each its
    module's state_dict: an nn.Linear's, a conv block's), and for a conv net
    ``layer_shapes``, each layer's input shape (learn/nets/conv.py: ConvNet.shapes)."""
    shapes = {"layer_shapes": result.attrs["layer_shapes"]} if "layer_shapes" in result.attrs else {}
    return {"config": dataclasses.asdict(config), "dims": result.dims, "class_names": list(class_names),
            "layers": [linear.state_dict() for linear in result.linears],
            "heads": [head.state_dict() for head in result.heads], **shapes}


def save_model(model: dict, path: str) -> None:
    """Write ``model`` (model_contents) to ``path`` atomically; raises WriteFailed
    (store/atomic.py) or the error torch gave."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: torch.save(model, f))


def rescue_model(config: Config, model: dict) -> str:
    """The weights --model-out could not take, written beside where a run's
    rescue file goes (store/rescue.py); says where, in a few words."""
    try:
        path = rescue.rescue_file(config.out, config.model_out, ".pt", lambda f: torch.save(model, f))
    except Exception as error:  # noqa: BLE001
        return f"the model could not be saved anywhere else either ({one_line(str(error))})"
    return f"the model is saved in {path} instead"


def main(argv=None) -> int:
    comm = MPI.COMM_WORLD
    install_abort_on_error(comm)
    if not isinstance(sys.stdout, command.QuietOnClosedPipe):  # `... | head`: train and record all the same
        sys.stdout = command.QuietOnClosedPipe(sys.stdout)
    narrowed = comm.gather(preflight.restore_affinity(), root=0)  # before World reads the masks
    if comm.Get_rank() == 0 and preflight.affinity_line(narrowed):
        print(preflight.affinity_line(narrowed), file=sys.stderr, flush=True)
    try:
        with contextlib.redirect_stdout(sys.stdout if comm.Get_rank() == 0 else io.StringIO()):
            config = parse_config(argv)  # --help prints once, from rank 0
        mismatch = launch_mismatch(comm.Get_size())
        if mismatch:
            raise UsageError(mismatch)
        validate(config, comm.Get_size())
        guard.set_peer_timeout(config.peer_timeout)
        if VARIANTS[config.variant].agreement:  # SIGTERM/SIGINT: stop at the next epoch boundary, all ranks together
            faults.INTERRUPTS.install()
        world = World(comm)
        guard.set_hosts(world.hostnames)
        run(config, world)
    except UsageError as error:
        if comm.Get_rank() == 0:
            print(f"pffbench: error: {one_line(error)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except console.AlreadyComplete as done:
        if comm.Get_rank() == 0:
            print(f"pffbench: {done}", flush=True)
        return 0
    except NotRecorded as error:  # only rank 0 records
        print(f"pffbench: error: {one_line(error)}", file=sys.stderr, flush=True)
        return EXIT_NOT_RECORDED
    except faults.RunStopped as stop:
        if comm.Get_rank() == 0:
            print(f"pffbench: {'error' if stop.status == 'failed' else 'stopped'}: {stop.message}",
                  file=sys.stderr, flush=True)
        return stop.exit_code
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
