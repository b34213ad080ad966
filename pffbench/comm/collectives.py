"""Collectives every schedule shares, all on raw buffers (never pickled) and
guarded (pffbench/comm/guard.py): sharing the training data from rank 0,
gathering layers, timing tables and trace events to rank 0, and sums.
"""
from __future__ import annotations

import numpy as np
import torch
from mpi4py import MPI

from .guard import wait, wait_all

LAYER_TAG_BASE = 1000
DATA_TAG = 1900


def gather_layers(comm: MPI.Comm, owned: dict[int, torch.nn.Module], dims: list[int],
                  owner_of: list[int], shapes: list[tuple[int, int]] | None = None,
                  make=None) -> list[torch.nn.Module] | None:
    """Copy every layer's weights to rank 0 over point-to-point buffers.
    Returns the full list of layers (CPU) on rank 0, None elsewhere.
    Layer i is an nn.Linear dims[i] -> dims[i + 1] wide, or ``shapes[i]``
    (in, out) if given (e.g. the auxiliary head beside layer i), or, with
    ``make``, the module ``make(i)`` builds (a conv net's block, say: rank 0
    receives into it).  A layer's tensors travel as its state_dict lists
    them, float32, one message each (a Linear: weight, bias)."""
    shapes = shapes or list(zip(dims[:-1], dims[1:]))
    make = make or (lambda index: torch.nn.Linear(*shapes[index]))
    rank = comm.Get_rank()
    if rank != 0:
        requests = []
        keep = []
        for index, layer in owned.items():
            for part, tensor in enumerate(_parts(layer)):
                array = tensor.detach().to("cpu").contiguous().numpy()
                keep.append(array)
                requests.append(comm.Isend([array, MPI.FLOAT], dest=0, tag=_layer_tag(index, part)))
        wait_all(requests, 0, "sending its layers to rank 0")
        return None
    layers = []
    for index, owner in enumerate(owner_of):
        layer = make(index)
        if owner == 0:
            layer.load_state_dict({k: v.detach().cpu() for k, v in owned[index].state_dict().items()})
        else:
            with torch.no_grad():
                for part, tensor in enumerate(_parts(layer)):
                    wait(comm.Irecv([tensor.numpy(), MPI.FLOAT], source=owner, tag=_layer_tag(index, part)),
                         owner, f"gathering layer {index}")
        layers.append(layer)
    return layers


PARTS = 4  # tensors a layer may have (a Linear: 2; a conv block: its convolution's weights, GroupNorm's scale, shift)


def _parts(layer: torch.nn.Module) -> list[torch.Tensor]:
    """A layer's tensors in state_dict order (views of its parameters): what gather_layers sends."""
    parts = list(layer.state_dict().values())
    if len(parts) > PARTS or any(part.dtype != torch.float32 for part in parts):
        raise ValueError(f"gather_layers sends layers of at most {PARTS} float32 tensors, got "
                         f"{[(tuple(p.shape), p.dtype) for p in parts]}")
    return parts


def _layer_tag(index: int, part: int) -> int:
    """The tag of layer ``index``'s tensor ``part``: a tag of its own for every tensor of every layer."""
    return LAYER_TAG_BASE + PARTS * index + part


def gather_rows(comm: MPI.Comm, local: np.ndarray) -> np.ndarray | None:
    """Stack every rank's equally shaped float64 array on rank 0: [size, ...]."""
    local = np.ascontiguousarray(local, dtype=np.float64)
    out = np.empty((comm.Get_size(),) + local.shape) if comm.Get_rank() == 0 else None
    wait(comm.Igather([local, MPI.DOUBLE], [out, MPI.DOUBLE] if out is not None else None, root=0),
         "the other ranks", "a gather to rank 0")
    return out


def sum_to_root(comm: MPI.Comm, local: np.ndarray) -> np.ndarray | None:
    local = np.ascontiguousarray(local, dtype=np.float64)
    out = np.empty_like(local) if comm.Get_rank() == 0 else None
    wait(comm.Ireduce([local, MPI.DOUBLE], [out, MPI.DOUBLE] if out is not None else None, op=MPI.SUM, root=0),
         "the other ranks", "a reduction to rank 0")
    return out


def sum_everywhere(comm: MPI.Comm, local: np.ndarray, operation: str = "an allreduce") -> np.ndarray:
    """Element-wise float64 sum over ranks, on every rank (guarded)."""
    out = np.ascontiguousarray(local, dtype=np.float64).copy()
    wait(comm.Iallreduce(MPI.IN_PLACE, [out, MPI.DOUBLE], op=MPI.SUM), "the other ranks", operation)
    return out


def gather_events(comm: MPI.Comm, local: np.ndarray) -> np.ndarray | None:
    """Every rank's [n_r, k] float64 rows on rank 0 (n_r may differ between
    ranks) as one [sum n_r, k + 1] array whose first column is the rank."""
    local = np.ascontiguousarray(local, dtype=np.float64)
    width = local.shape[1]
    counts = gather_rows(comm, np.array([local.shape[0]], dtype=np.float64))
    if comm.Get_rank() != 0:
        wait(comm.Igatherv([local, MPI.DOUBLE], None, root=0), 0, "a gather of trace events")
        return None
    counts = counts[:, 0].astype(np.int64)
    rows = np.empty((int(counts.sum()), width))
    displacements = np.concatenate(([0], np.cumsum(counts)[:-1])) * width
    wait(comm.Igatherv([local, MPI.DOUBLE], [rows, counts * width, displacements, MPI.DOUBLE], root=0),
         "the other ranks", "a gather of trace events")
    return np.column_stack((np.repeat(np.arange(comm.Get_size()), counts), rows))


def share_training_data(comm: MPI.Comm, dataset, rows_per_rank=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's training examples, sent from rank 0 as raw buffers: the
    whole set (``rows_per_rank`` None) or each rank's own rows (federated:
    a rank never receives another's shard)."""
    rank = comm.Get_rank()
    if rank == 0:
        x, y = dataset.x_train.contiguous(), dataset.y_train.contiguous()
        sharded = rows_per_rank is not None
        counts = [len(r) for r in rows_per_rank] if sharded else [x.shape[0]] * comm.Get_size()
        meta = (counts, x.shape[1], sharded)
    else:
        meta = None
    counts, width, sharded = comm.bcast(meta, root=0)
    if not sharded:
        if rank != 0:
            x, y = torch.empty(counts[rank], width), torch.empty(counts[rank], dtype=torch.int64)
        wait_all([comm.Ibcast([x.numpy(), MPI.FLOAT], root=0), comm.Ibcast([y.numpy(), MPI.INT64_T], root=0)],
                 0 if rank else "the other ranks", "sharing the training data")
        return x, y
    if rank == 0:
        requests, keep = [], []
        for dest in range(1, comm.Get_size()):
            part_x, part_y = x[rows_per_rank[dest]].contiguous(), y[rows_per_rank[dest]].contiguous()
            keep += [part_x, part_y]
            requests.append(comm.Isend([part_x.numpy(), MPI.FLOAT], dest=dest, tag=DATA_TAG))
            requests.append(comm.Isend([part_y.numpy(), MPI.INT64_T], dest=dest, tag=DATA_TAG + 1))
        wait_all(requests, "the other ranks", "sending their shards")
        return x[rows_per_rank[0]].contiguous(), y[rows_per_rank[0]].contiguous()
    x, y = torch.empty(counts[rank], width), torch.empty(counts[rank], dtype=torch.int64)
    wait_all([comm.Irecv([x.numpy(), MPI.FLOAT], source=0, tag=DATA_TAG),
              comm.Irecv([y.numpy(), MPI.INT64_T], source=0, tag=DATA_TAG + 1)], 0, "receiving its shard")
    return x, y
