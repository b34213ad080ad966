#!/usr/bin/env bash
# Same weights, same results layout: runs a fixed set of short trainings in the working tree and in a
# temporary git worktree at REV (default: 62f6012, the last commit before the layout of issue 11), then compares, run by run, the saved models
# tensor by tensor (identical bits) and the results files' layout (group and dataset names, shapes, dtypes,
# attribute names; timing values differ from run to run, of course).  One line per run; exit 1 on any
# difference.
#
#   tools/same_weights.sh [REV]        e.g. tools/same_weights.sh 62f6012
#
# The layout change itself (up to 241331f) gives "identical" for every run.  Later commits add attributes and
# dataset metadata on purpose (class names, CPU quota, host load, axes/units/crc32: results format 2), so
# from them the layout comparison against 62f6012 reports those additions.
#
# Synthetic data, 2 epochs of a 64,64 net, one torch thread per rank in both trees.  The "-resumed" runs
# check checkpoints: REV writes them in a complete run, then both trees resume from a copy of them (so
# checkpoints written by REV must still resume here).  PYTHON and MPIEXEC default to the repository's .venv.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REV="${1:-62f6012}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
MPIEXEC="${MPIEXEC:-$ROOT/.venv/bin/mpiexec}"
WORK="$(mktemp -d)"
OLD="$WORK/tree-$REV"
cleanup() { git -C "$ROOT" worktree remove --force "$OLD" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
git -C "$ROOT" worktree add --detach "$OLD" "$REV" >/dev/null 2>&1

COMMON=(--dataset synthetic --layers 64,64 --epochs 2 --batch-size 50 --threads 1 --seed 3)
RUNS=(  # name ranks flags...
  "pipeline-p1 1 --variant pipeline"
  "pipeline-p2 2 --variant pipeline"
  "all-layers-p2 2 --variant all-layers --splits 2"
  "single-layer-p2 2 --variant single-layer --splits 2"
  "federated-p2 2 --variant federated --splits 2"
  "perf-opt-p2 2 --variant perf-opt --splits 2"
  "backprop-p1 1 --variant backprop"
  "dp-backprop-p2 2 --variant dp-backprop"
  "pipeline-p2-resumed 2 --variant pipeline --epochs 3 --checkpoint-dir ckpt --resume"
  "all-layers-p2-resumed 2 --variant all-layers --epochs 4 --splits 4 --checkpoint-dir ckpt --resume"
)

train() {  # tree out-folder name ranks flags...
  local tree="$1" out="$2" name="$3" ranks="$4"; shift 4
  mkdir -p "$out"
  (cd "$out" && PYTHONPATH="$tree" timeout 600 "$MPIEXEC" -n "$ranks" "$PYTHON" -m pffbench.run "${COMMON[@]}" "$@" \
     --name "$name" --out "$name.h5" --model-out "$name.pt" >"$name.log" 2>&1) \
    || { echo "$name: the run failed in $tree (see below)"; cat "$out/$name.log"; return 1; }
}

status=0
for spec in "${RUNS[@]}"; do
  read -r name ranks flags <<<"$spec"
  if [[ " $flags " == *" --resume "* ]]; then  # REV's complete run writes the checkpoints both trees resume from
    # shellcheck disable=SC2086
    train "$OLD" "$WORK/first" "$name" "$ranks" ${flags/--resume/} || { status=1; continue; }
    mkdir -p "$WORK/old" "$WORK/new"
    cp -r "$WORK/first/ckpt" "$WORK/old/ckpt" && cp -r "$WORK/first/ckpt" "$WORK/new/ckpt"
    # the complete run marks its checkpoints FINISHED (a --resume of it would do nothing): resume its last epoch
    rm -f "$WORK/old/ckpt/FINISHED" "$WORK/new/ckpt/FINISHED"
  fi
  # shellcheck disable=SC2086
  train "$OLD" "$WORK/old" "$name" "$ranks" $flags || { status=1; continue; }
  # shellcheck disable=SC2086
  train "$ROOT" "$WORK/new" "$name" "$ranks" $flags || { status=1; continue; }
  rm -rf "$WORK/first/ckpt" "$WORK/old/ckpt" "$WORK/new/ckpt"
  "$PYTHON" - "$WORK/old" "$WORK/new" "$name" "$REV" <<'PY' || status=1
import sys

import h5py
import torch

old, new, name, rev = sys.argv[1:]


def same(a, b, where):
    """Differences between two loaded model files, as a list of places."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        ok = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a.view(-1).view(torch.uint8) if a.numel() else a,
                                                   b.view(-1).view(torch.uint8) if b.numel() else b)
        return [] if ok else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys"]
        return [d for k in a for d in same(a[k], b[k], f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where} length"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in same(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def layout(path):
    """Every object's name, kind, shape, dtype and attribute names."""
    out = []
    with h5py.File(path, "r") as f:
        out.append(("/", "file", sorted(f.attrs)))
        def visit(key, obj):
            if isinstance(obj, h5py.Dataset):
                out.append((key, "dataset", obj.shape, str(obj.dtype), sorted(obj.attrs)))
            else:
                out.append((key, "group", sorted(obj.attrs)))
        f.visititems(visit)
    return out


model_diff = same(torch.load(f"{old}/{name}.pt", weights_only=False),
                  torch.load(f"{new}/{name}.pt", weights_only=False), "model")
a, b = layout(f"{old}/{name}.h5"), layout(f"{new}/{name}.h5")
if name.endswith("-resumed"):  # both really resumed from REV's checkpoint
    for tree in (old, new):
        with h5py.File(f"{tree}/{name}.h5", "r") as f:
            if "resumed_from_epoch" not in f[f"runs/{name}"].attrs:
                model_diff.append(f"{tree}: did not resume")
layout_diff = sorted(set(map(repr, a)) ^ set(map(repr, b)))
if not model_diff and not layout_diff:
    resumed = " (resumed from REV's checkpoint)" if name.endswith("-resumed") else ""
    print(f"{name}: identical (model bits, results layout: {len(a)} objects){resumed}")
    sys.exit(0)
print(f"{name}: DIFFERS from {rev}: " + "; ".join(model_diff[:5] + layout_diff[:5]))
sys.exit(1)
PY
done
exit $status
