"""A throw-away single-node Slurm on localhost, for testing jobs/*.sbatch.

Needs Debian's slurmctld, slurmd and slurm-client (`apt-get install -y
--no-install-recommends slurmctld slurmd slurm-client munge`) and root (slurmd
runs jobs as their submitter).  Everything lives in one temporary directory
found through SLURM_CONF; authentication is auth/none + cred/none, so no
munged is needed; the daemons run in the foreground (-D) as children of this
process and are stopped by their PIDs.

    with LocalSlurm(tmp_dir) as slurm:
        job = slurm.sbatch("jobs/single_run.sbatch", "--epochs", "1")
        slurm.wait(job)
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "sbatch", "squeue", "srun", "sinfo", "sacct")


def available() -> str | None:
    """None if a local Slurm can start here, else why not."""
    missing = [d for d in DAEMONS[:5] if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        return f"slurm not installed (missing {', '.join(missing)})"
    if os.geteuid() != 0:
        return "a local slurmd needs root"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class LocalSlurm:
    def __init__(self, directory, cpus: int | None = None, mpi_default: str = "none"):
        """cpus: CPUs the node claims (config_overrides lets it claim more than it has)."""
        self.dir = Path(directory)
        self.cpus = cpus or os.cpu_count() or 1
        self.mpi_default = mpi_default
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []

    def write_conf(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        ctld_port, d_port = _free_ports(2)
        d = self.dir
        # job ids unique to this cluster: MPICH names its shared-memory segment after the PMI job
        # (job.step), so a segment left by a killed earlier run with the same ids would hang MPI_Init
        first_job_id = 1000 + secrets.randbelow(60_000_000)
        self.conf.write_text(f"""\
ClusterName=pffbenchtest
SlurmctldHost={self.node}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault={self.mpi_default}
FirstJobId={first_job_id}
ReturnToService=2
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
KillWait=5
MinJobAge=300
SlurmdTimeout=30
SlurmdParameters=config_overrides
NodeName={self.node} CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout: float = 30) -> None:
        self.write_conf()
        for daemon, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D"])):
            log = open(self.dir / "log" / f"{daemon}.stderr", "w")
            self.procs.append(subprocess.Popen([_binary(daemon), *args], env=self.env, stdout=log,
                                               stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: {self.logs()}")
            state = subprocess.run(["sinfo", "-h", "-n", self.node, "-o", "%t"], env=self.env,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            if state.startswith("idle"):
                return
            time.sleep(0.3)
        raise RuntimeError(f"the local Slurm node did not become idle in {timeout:g} s: {self.logs()}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.procs = []

    def __enter__(self) -> "LocalSlurm":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self, lines: int = 30) -> str:
        text = []
        for path in sorted((self.dir / "log").glob("*")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            text.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(text)

    def sbatch(self, *args: str, cwd=None, env: dict | None = None) -> int:
        done = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd,
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {done.stderr.strip()}")
        return int(done.stdout.strip().split(";")[0])

    def wait(self, job: int, timeout: float = 300, poll: float = 0.5) -> str:
        """Poll squeue until the job has left the queue; its final state (from
        scontrol, kept MinJobAge seconds) is returned."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queued = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], env=self.env,
                                    capture_output=True, text=True, timeout=10).stdout.strip()
            if not queued or queued in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                return self.state(job)
            time.sleep(poll)
        subprocess.run(["scancel", str(job)], env=self.env, timeout=10)
        raise TimeoutError(f"job {job} still queued or running after {timeout:g} s")

    def state(self, job: int) -> str:
        out = subprocess.run(["scontrol", "show", "job", str(job)], env=self.env, capture_output=True,
                             text=True, timeout=10).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def srun(self, *args: str, timeout: float = 120, env: dict | None = None, cwd=None):
        return subprocess.run(["srun", *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)
