"""The alpha-beta link model, a table of common interconnects, collective
costs, and the cluster a prediction is for.

A message of n bytes over a link costs ``alpha + n / beta`` (Hockney's
model): alpha the latency (s), beta the bandwidth (bytes/s).

The table's figures are rounded, typical published values, meant for
planning; measure your own (``python -m pffbench.model links``, or the OSU
micro-benchmarks ``osu_latency``/``osu_bw``) and pass ``--alpha/--beta``.
Bandwidths of Ethernet with TCP are the line rate less ~6 % of framing and
TCP/IP headers (1500-byte frames); latencies of TCP over a kernel stack are
tens of microseconds (RDMA ones, RoCE or InfiniBand, one to two).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

GB = 1e9
# gloo between two ranks of the dev VM (python -m pffbench.perfmodel.linkprobe --gloo, 2026-11-30 10:53 UTC,
# quiet host): send/recv 8 B 111 us, 8 MiB 2.28 ms; allreduce 8 B 209 us, 8 MiB 7.55 ms
GLOO_WHEN = "2026-11-30 10:53 UTC, quiet host (load ~1)"


@dataclass(frozen=True)
class Link:
    name: str
    alpha: float        # s
    beta: float         # bytes/s (math.inf: no transfer cost, e.g. a zero-copy ring)
    source: str = ""
    overhead: float = 0.0  # s of the sender's and of the receiver's own time per message (LogP's o; Culler et al.,
    # "LogP: towards a realistic model of parallel computation", PPoPP 1993); 0 where a wait costs no work

    def time(self, nbytes: float) -> float:
        """alpha + nbytes / beta, seconds; 0 for an empty message on a free link."""
        return self.alpha + (nbytes / self.beta if self.beta != math.inf else 0.0)


FREE = Link("free", 0.0, math.inf, "no cost: for bounds and tests")

TABLE = {link.name: link for link in (
    Link("ring", 12e-6, math.inf,
         "pffbench's shared-memory ring between ranks on one node: no copy, a counter update; 12 us is the "
         "median per-minibatch receiver wait measured on the 2-vCPU dev VM (README, 'The pipeline')"),
    Link("shm", 0.5e-6, 8 * GB,
         "MPI point-to-point within a node through shared memory (MPICH/Open MPI): OSU osu_latency "
         "~0.2-0.5 us, osu_bw ~5-15 GB/s on current x86 servers (MVAPICH performance pages, "
         "mvapich.cse.ohio-state.edu/performance/pt_to_pt); 8 GB/s a mid value"),
    Link("devvm-shm", 2.2e-6, 2.1 * GB,
         "MPI (pip MPICH 5) through shared memory on this project's 2-vCPU AMD EPYC dev VM: measured with "
         "python -m pffbench.perfmodel.linkprobe, 2026-11-30 07:57 UTC (8 B: 2.2 us; 8 MiB: 4.0 ms), host at load ~11"),
    Link("devvm-gloo", 111e-6, 3.86 * GB,
         "torch.distributed's gloo send/recv (TCP over the loopback) between 2 ranks on this project's 2-vCPU "
         "AMD EPYC dev VM: python -m pffbench.perfmodel.linkprobe --gloo, " + GLOO_WHEN + " (8 B: 111 us; 8 MiB: "
         "2.28 ms); overhead: each message of torch.distributed.pipelining costs its sender and its receiver "
         "354 us of their own time (the same probe at 11:30 UTC: GPipe steps of 16-wide stages at 4 and 16 "
         "microbatches on 2 stages and on 1; the library alone 57 us per operation)",
         overhead=354e-6),
    Link("devvm-gloo-allreduce", 104e-6, 1.14 * GB,
         "gloo's allreduce of float32 tensors between 2 ranks on the same VM, fitted as a 2-rank ring "
         "(2 alpha + n / beta through 8 B: 209 us and 8 MiB: 7.55 ms): python -m pffbench.perfmodel.linkprobe "
         "--gloo, " + GLOO_WHEN + "; 3.3x its send/recv's cost at 8 MiB (gloo reduces and copies on one thread)"),
    Link("1GbE", 50e-6, 0.117 * GB,
         "1 Gb/s Ethernet, TCP: IEEE 802.3ab line rate 125 MB/s less ~6 % headers; kernel TCP latency "
         "~25-60 us (NetPIPE/OSU figures for GbE clusters)"),
    Link("10GbE", 20e-6, 1.17 * GB,
         "10 Gb/s Ethernet, TCP: IEEE 802.3ae 1.25 GB/s line rate less ~6 %; TCP latency ~10-30 us"),
    Link("25GbE", 12e-6, 2.9 * GB,
         "25 Gb/s Ethernet, TCP: IEEE 802.3by 3.125 GB/s line rate less ~6 %; TCP latency ~8-20 us"),
    Link("100GbE-RoCE", 2e-6, 11.5 * GB,
         "100 Gb/s Ethernet with RDMA (RoCE v2, NVIDIA ConnectX-5/6): 12.5 GB/s line rate; "
         "osu_latency ~1.5-2.5 us"),
    Link("IB-EDR", 1.1e-6, 12.0 * GB,
         "InfiniBand EDR, 100 Gb/s (ConnectX-5): osu_latency ~1.0-1.1 us, osu_bw ~12.0-12.3 GB/s "
         "(MVAPICH performance pages)"),
    Link("IB-HDR", 1.1e-6, 24.0 * GB,
         "InfiniBand HDR, 200 Gb/s (ConnectX-6): osu_latency ~1.0-1.2 us, osu_bw ~24 GB/s "
         "(MVAPICH performance pages)"),
    Link("IB-NDR", 1.0e-6, 48.0 * GB,
         "InfiniBand NDR, 400 Gb/s (ConnectX-7): ~1 us, ~48 GB/s of the 50 GB/s line rate "
         "(NVIDIA ConnectX-7 product brief)"),
    Link("Slingshot-11", 2.0e-6, 23.0 * GB,
         "HPE Slingshot-11, 200 Gb/s (Cassini NIC): MPI latency ~2 us, ~23 GB/s (De Sensi et al., "
         "'An In-Depth Analysis of the Slingshot Interconnect', SC20, for the fabric; Cassini's line rate)"),
)}


def link(name_or_link) -> Link:
    """A Link, a name from TABLE, or measured figures "ALPHA,BETA[,OVERHEAD]" (seconds, bytes/s, seconds;
    e.g. linkprobe's output "1.1e-4,3.9e9,3.5e-4").  Raises ValueError for anything else."""
    if isinstance(name_or_link, Link):
        return name_or_link
    if name_or_link in TABLE:
        return TABLE[name_or_link]
    try:
        figures = [float(x) for x in str(name_or_link).split(",")]
    except ValueError:
        figures = []
    if len(figures) in (2, 3) and all(math.isfinite(x) and x >= 0 for x in figures) and figures[1] > 0:
        return Link(f"measured ({name_or_link})", figures[0], figures[1], "given on the command line",
                    figures[2] if len(figures) == 3 else 0.0)
    raise ValueError(f"unknown link {name_or_link!r}; known: {', '.join(TABLE)}, "
                     "or measured figures ALPHA,BETA[,OVERHEAD] (s, bytes/s, s)")


def allreduce_time(nbytes: float, p: int, lk: Link, algorithm: str = "auto") -> float:
    """Seconds for an allreduce of ``nbytes`` over ``p`` ranks on links ``lk``.

    ring: 2 (p-1) (alpha + n / (p beta)) (reduce-scatter then allgather;
    Thakur, Rabenseifner and Gropp, "Optimization of Collective Communication
    Operations in MPICH", IJHPCA 2005; the local reduction's arithmetic is
    left out).  tree: recursive doubling, ceil(log2 p) (alpha + n / beta)
    (same paper), what MPICH uses for short messages.  auto: the cheaper of
    the two, as MPICH picks by message size."""
    if p <= 1:
        return 0.0
    ring = 2 * (p - 1) * lk.time(nbytes / p)
    tree = math.ceil(math.log2(p)) * lk.time(nbytes)
    if algorithm == "ring":
        return ring
    if algorithm == "tree":
        return tree
    if algorithm == "auto":
        return min(ring, tree)
    raise ValueError(f"unknown allreduce algorithm {algorithm!r} (ring, tree, auto)")


def broadcast_time(nbytes: float, p: int, lk: Link) -> float:
    """Binomial-tree broadcast: ceil(log2 p) (alpha + n / beta) (Thakur et al. 2005)."""
    return 0.0 if p <= 1 else math.ceil(math.log2(p)) * lk.time(nbytes)


@dataclass
class Cluster:
    """Where the ranks run: ``ranks_per_node`` consecutive ranks share a node
    of ``cores_per_node`` cores; each rank computes with ``threads`` of them.
    ``intra``: the MPI link within a node, ``inter``: between nodes, ``ring``:
    the pipeline's shared-memory ring within a node (its ``--transport auto``),
    ``group``: torch.distributed's process group's send/recv within a node
    (gloo goes through TCP on the loopback even there), ``group_reduce``: its
    allreduce within a node, as an effective link (linkprobe --gloo); between
    nodes both are ``inter``."""
    ranks_per_node: int = 1
    cores_per_node: int = 1
    threads: int = 1
    intra: Link = field(default_factory=lambda: TABLE["shm"])
    inter: Link = field(default_factory=lambda: TABLE["10GbE"])
    ring: Link = field(default_factory=lambda: TABLE["ring"])
    group: Link = field(default_factory=lambda: TABLE["devvm-gloo"])
    group_reduce: Link = field(default_factory=lambda: TABLE["devvm-gloo-allreduce"])

    def __post_init__(self):
        if self.ranks_per_node < 1 or self.cores_per_node < 1 or self.threads < 1:
            raise ValueError("ranks per node, cores per node and threads must be positive")

    def node_of(self, rank: int) -> int:
        return rank // self.ranks_per_node

    def nodes(self, p: int) -> int:
        return -(-p // self.ranks_per_node)

    def between(self, a: int, b: int, shared_ring: bool = False) -> Link:
        """The link from rank a to rank b."""
        if a == b:
            return FREE
        if self.node_of(a) == self.node_of(b):
            return self.ring if shared_ring else self.intra
        return self.inter

    def collective_link(self, p: int) -> Link:
        """The slowest link an MPI collective over ranks 0..p-1 crosses."""
        return self.intra if self.nodes(p) <= 1 else self.inter

    def group_between(self, a: int, b: int) -> Link:
        """The process group's link from rank a to rank b (gpipe, 1f1b).  Between nodes, the network with
        the group's per-message overhead: that is the library's and gloo's CPU work, not the wire's."""
        if a == b:
            return FREE
        if self.node_of(a) == self.node_of(b):
            return self.group
        return replace(self.inter, overhead=max(self.inter.overhead, self.group.overhead))

    def group_link(self, p: int) -> Link:
        """The link a process-group allreduce over ranks 0..p-1 is charged at (ddp)."""
        return self.group_reduce if self.nodes(p) <= 1 else self.inter

    def without_links(self) -> "Cluster":
        return Cluster(self.ranks_per_node, self.cores_per_node, self.threads, FREE, FREE, FREE, FREE, FREE)
