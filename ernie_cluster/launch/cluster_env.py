"""Who am I in this allocation: one small object per node, from environment variables only.

`SlurmEnvironment.from_env(os.environ)` inside a Slurm job step, `LocalEnvironment.from_env(...)`
on a machine without Slurm. Both answer the same questions (job id, restart count, node rank,
number of nodes, node names, main address and port, end of the allocation), so the command
builder and the node launcher never look at Slurm variables themselves.

Every node computes the same main address and port without talking to the others: the address
is the first node of the (expanded) node list, the port is the spec's `cluster.master_port` or a
port derived from the job id.

Stdlib only; no paddle, nothing heavy: this runs on every node before the trainers.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, List, Mapping, Optional, Sequence

from .. import slurm

MASTER_ADDR_ENV = "ERNIE_CLUSTER_MASTER_ADDR"
LOCAL_JOB_ID_ENV = "ERNIE_CLUSTER_LOCAL_JOB_ID"
LOCAL_RESTART_ENV = "ERNIE_CLUSTER_LOCAL_RESTART"

# The derived port stays below Linux's ephemeral range (32768-60999) and below the range
# paddle.distributed.launch picks trainer ports from (PORT_RANGE, default 35100-64000).
PORT_BASE = 20000
PORT_SPAN = 12000

MAX_HOSTLIST = 1_000_000


class ClusterEnvError(RuntimeError):
    """The environment does not describe a usable allocation; the message says what to fix."""


class HostlistError(ValueError):
    """A Slurm hostlist expression that cannot be expanded."""


# ---------------------------------------------------------------------------
# Slurm hostlist syntax
# ---------------------------------------------------------------------------


def _split_top_level(text: str) -> List[str]:
    """Split on commas that are not inside brackets; check bracket balance."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            if depth:
                raise HostlistError(f"nested '[' at position {i} in {text!r}")
            depth = 1
        elif ch == "]":
            if not depth:
                raise HostlistError(f"']' without '[' at position {i} in {text!r}")
            depth = 0
        elif ch == "," and not depth:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise HostlistError(f"unclosed '[' in {text!r}")
    parts.append(text[start:])
    return parts


def _expand_range_list(body: str, expr: str) -> List[str]:
    """`001-064,070` -> ['001', ..., '064', '070'] (zero padding from the lower bound)."""
    if not body.strip():
        raise HostlistError(f"empty brackets in {expr!r}")
    out: List[str] = []
    for item in body.split(","):
        item = item.strip()
        if not item:
            raise HostlistError(f"empty range in [{body}] of {expr!r}")
        if "-" in item:
            lo_text, _, hi_text = item.partition("-")
            if not (lo_text.isdigit() and hi_text.isdigit()):
                raise HostlistError(f"range {item!r} in {expr!r} must be digits 'LO-HI'")
            lo, hi = int(lo_text), int(hi_text)
            if hi < lo:
                raise HostlistError(f"range {item!r} in {expr!r} goes backwards")
            if hi - lo + 1 > MAX_HOSTLIST:
                raise HostlistError(f"range {item!r} in {expr!r} is too large")
            width = len(lo_text) if lo_text.startswith("0") and len(lo_text) > 1 else 0
            out.extend(str(n).zfill(width) for n in range(lo, hi + 1))
        else:
            if not item.isdigit():
                raise HostlistError(f"{item!r} in [{body}] of {expr!r} is not a number or 'LO-HI' range")
            out.append(item)
    return out


def _expand_one(token: str, expr: str) -> List[str]:
    """One comma-free (outside brackets) token, possibly with several bracket groups."""
    pieces: List[List[str]] = []
    pos = 0
    for match in re.finditer(r"\[([^\]]*)\]", token):
        if match.start() > pos:
            pieces.append([token[pos:match.start()]])
        pieces.append(_expand_range_list(match.group(1), expr))
        pos = match.end()
    if pos < len(token):
        pieces.append([token[pos:]])
    names = [""]
    for options in pieces:  # the leftmost group varies slowest, as Slurm prints them
        names = [n + o for n in names for o in options]
        if len(names) > MAX_HOSTLIST:
            raise HostlistError(f"{expr!r} expands to more than {MAX_HOSTLIST} names")
    return names


def expand_hostlist(expr: str) -> List[str]:
    """Expand Slurm's compressed hostlist syntax, in order, keeping zero padding.

    `gpu[001-003,070],gpu-b[1-2]` -> gpu001 gpu002 gpu003 gpu070 gpu-b1 gpu-b2;
    `rack[1-2]-n[1-2]` -> rack1-n1 rack1-n2 rack2-n1 rack2-n2; plain names pass through.
    """
    if expr is None:
        raise HostlistError("no hostlist given")
    text = expr.strip()
    if not text:
        raise HostlistError("empty hostlist")
    names: List[str] = []
    for token in _split_top_level(text):
        token = token.strip()
        if not token:
            raise HostlistError(f"empty name in hostlist {expr!r} (stray comma?)")
        if any(c.isspace() for c in token):
            raise HostlistError(f"whitespace inside name {token!r} of hostlist {expr!r}")
        names.extend(_expand_one(token, expr))
        if len(names) > MAX_HOSTLIST:
            raise HostlistError(f"{expr!r} expands to more than {MAX_HOSTLIST} names")
    return names


# ---------------------------------------------------------------------------
# Ports and addresses
# ---------------------------------------------------------------------------


def derive_port(job_id: str, configured: int = 0, restart: int = 0) -> int:
    """`configured` when non-zero; else a port in [20000, 32000) from the job id and restart count, the
    same on every node. A requeued attempt gets another port: the last one may still be in TIME_WAIT."""
    if configured:
        return int(configured)
    text = str(job_id)
    number = int(text) if text.isdigit() else zlib.crc32(text.encode())
    return PORT_BASE + (number + 7919 * int(restart)) % PORT_SPAN


def _ipv4(value: str) -> Optional[str]:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        return None


def default_resolver(name: str) -> Optional[str]:
    """IPv4 address of `name`, or None when it does not resolve."""
    literal = _ipv4(name)
    if literal:
        return literal
    try:
        return socket.gethostbyname(name)
    except (OSError, UnicodeError):
        return None


def _scontrol_node_addr(name: str, env: Mapping[str, str]) -> Optional[str]:
    """NodeAddr of a Slurm node (for emulated or unlisted node names)."""
    out = slurm.show_node(name, env=env)
    match = re.search(r"\bNodeAddr=(\S+)", out.stdout)
    if not match:
        return None
    return default_resolver(match.group(1))


def node_address(name: str, env: Mapping[str, str], *,
                 resolver: Callable[[str], Optional[str]] = default_resolver, use_scontrol: bool = True) -> Optional[str]:
    """A node's IPv4 address as the other nodes reach it.

    A Debian-style /etc/hosts maps a machine's own name to 127.0.1.1: then Slurm's NodeAddr is
    asked, and a non-loopback NodeAddr wins. Loopback stays only where Slurm says so too (all the
    "nodes" on one machine, as in the local test cluster).
    """
    address = resolver(name)
    if address and address.startswith("127.") and use_scontrol:
        slurm_address = _scontrol_node_addr(name, env)
        if slurm_address and not slurm_address.startswith("127."):
            return slurm_address
    return address


def parse_slurm_duration(text: str) -> Optional[int]:
    """squeue %L / %l values: `[D-]HH:MM:SS`, `MM:SS`; None for UNLIMITED, NOT_SET, INVALID."""
    return slurm.parse_duration(text)


Runner = Callable[[Sequence[str]], Optional[str]]


def _run_text(env: Mapping[str, str]) -> Runner:
    def run(args: Sequence[str]) -> Optional[str]:
        out = slurm.call(args, timeout="node", env=env)
        return out.stdout if out.ok else None
    return run


# ---------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------


@dataclass
class ClusterEnvironment:
    """The answers every node needs; subclasses fill them from their environment."""

    job_id: str
    restart_count: int
    node_rank: int
    num_nodes: int
    node_list: List[str]
    main_address: str
    main_port: int
    end_time: Optional[float] = None  # epoch seconds when the allocation ends, if known at start
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    is_slurm = False

    @property
    def node_name(self) -> str:
        return self.node_list[self.node_rank]

    @property
    def attempt(self) -> str:
        return f"{self.job_id}-{self.restart_count}"

    def validate(self) -> None:
        if self.num_nodes < 1:
            raise ClusterEnvError(f"number of nodes is {self.num_nodes}; it must be at least 1")
        if len(self.node_list) != self.num_nodes:
            raise ClusterEnvError(
                f"the node list has {len(self.node_list)} names ({_short(self.node_list)}) but the allocation "
                f"has {self.num_nodes} nodes; the launcher must run once per node of one job step")
        if not 0 <= self.node_rank < self.num_nodes:
            raise ClusterEnvError(f"node rank {self.node_rank} is outside 0..{self.num_nodes - 1}")
        if len(set(self.node_list)) != len(self.node_list):
            raise ClusterEnvError(f"the node list repeats names: {_short(self.node_list)}")
        if not 1 <= self.main_port <= 65535:
            raise ClusterEnvError(f"main port {self.main_port} is not a TCP port")
        if self.restart_count < 0:
            raise ClusterEnvError(f"restart count {self.restart_count} is negative")

    def describe(self) -> str:
        return (f"job_id={self.job_id} restart={self.restart_count} node_rank={self.node_rank} "
                f"num_nodes={self.num_nodes} node={self.node_name} master={self.main_address}:{self.main_port}")


def _short(names: Sequence[str], limit: int = 6) -> str:
    if len(names) <= limit:
        return ",".join(names)
    return ",".join(names[:limit]) + f",... ({len(names)} names)"


def _int(env: Mapping[str, str], names: Sequence[str], default: Optional[int] = None) -> Optional[int]:
    for name in names:
        value = env.get(name)
        if value is None or str(value).strip() == "":
            continue
        try:
            return int(str(value).strip())
        except ValueError:
            raise ClusterEnvError(f"${name}={value!r} is not an integer") from None
    return default


def resolve_main_address(first_node: str, env: Mapping[str, str], *,
                         resolver: Callable[[str], Optional[str]] = default_resolver,
                         fallback: Optional[str] = None, use_scontrol: bool = True) -> str:
    """IPv4 address of the first node: DNS/hosts, else the configured address, else Slurm's NodeAddr.

    paddle.distributed.launch compares the master ip with each node's own ip to decide who starts
    its rendezvous server, so this must be an address, never a host name.
    """
    address = node_address(first_node, env, resolver=resolver, use_scontrol=use_scontrol)
    if address:
        return address
    configured = fallback or env.get(MASTER_ADDR_ENV)
    if configured:
        address = resolver(configured)
        if address:
            return address
        raise ClusterEnvError(f"the configured master address ${MASTER_ADDR_ENV}={configured!r} does not resolve")
    if use_scontrol:
        address = _scontrol_node_addr(first_node, env)
        if address:
            return address
    raise ClusterEnvError(
        f"the first node {first_node!r} does not resolve to an address, so the nodes cannot meet there. "
        f"Fix name resolution for the compute nodes (/etc/hosts or DNS) or set ${MASTER_ADDR_ENV} "
        f"to that node's IPv4 address in the spec's environment.env")


@dataclass
class SlurmEnvironment(ClusterEnvironment):
    is_slurm = True

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, master_port: int = 0,
                 resolver: Callable[[str], Optional[str]] = default_resolver,
                 master_addr: Optional[str] = None, use_scontrol: bool = True) -> "SlurmEnvironment":
        job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
        if not job_id:
            raise ClusterEnvError("not inside a Slurm job ($SLURM_JOB_ID is not set); run through sbatch/srun, "
                                  "or pass --local to run on this machine")
        # Inside an srun step the step's node list and node ids belong together; the batch step has only the job's.
        nodelist_text = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist_text:
            raise ClusterEnvError("$SLURM_JOB_NODELIST is not set; cannot tell which nodes belong to the job")
        try:
            node_list = expand_hostlist(nodelist_text)
        except HostlistError as exc:
            raise ClusterEnvError(f"cannot expand the node list {nodelist_text!r}: {exc}") from None
        num_nodes = _int(env, ("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES"))
        if num_nodes is None:
            raise ClusterEnvError("$SLURM_JOB_NUM_NODES (or $SLURM_NNODES) is not set")
        node_rank = _int(env, ("SLURM_NODEID",))
        if node_rank is None:
            raise ClusterEnvError("$SLURM_NODEID is not set; start the launcher with srun (one task per node)")
        local_id = _int(env, ("SLURM_LOCALID",), 0)
        if local_id:
            raise ClusterEnvError(
                f"this is task {local_id} on its node; the launcher must run once per node "
                f"(srun --ntasks-per-node=1): it starts all trainers of the node itself")
        if num_nodes > 1 and not (env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID")):
            raise ClusterEnvError(
                f"the job has {num_nodes} nodes but this is the batch script, which runs on the first node only; "
                f"start the launcher with `srun --ntasks-per-node=1 ...` so it runs on every node")
        restart = _int(env, ("SLURM_RESTART_COUNT",), 0)
        end_time = None
        end_text = env.get("SLURM_JOB_END_TIME")
        if end_text and end_text.strip().isdigit() and int(end_text) > 0:
            end_time = float(end_text)
        obj = cls(job_id=str(job_id), restart_count=restart or 0, node_rank=node_rank, num_nodes=num_nodes,
                  node_list=node_list, main_address="", main_port=derive_port(job_id, master_port, restart or 0),
                  end_time=end_time, env=dict(env))
        obj.validate()
        self_name = env.get("SLURMD_NODENAME")
        if self_name and node_list[node_rank] != self_name:
            raise ClusterEnvError(
                f"$SLURM_NODEID={node_rank} names {node_list[node_rank]!r} in {nodelist_text!r}, "
                f"but this node is {self_name!r}")
        obj.main_address = resolve_main_address(node_list[0], env, resolver=resolver, fallback=master_addr,
                                                use_scontrol=use_scontrol)
        return obj

    def query_end_time(self, runner: Optional[Runner] = None) -> Optional[float]:
        """Ask Slurm when the job ends (the limit may have changed since the start); None if it cannot say."""
        runner = runner or _run_text(self.env)
        out = runner(["squeue", "-h", "-j", self.job_id, "-o", "%L"])
        if out is not None:
            left = parse_slurm_duration(out.strip().splitlines()[0] if out.strip() else "")
            if left is not None:
                return time.time() + left
        out = runner(["scontrol", "show", "job", "-o", self.job_id])
        if out:
            match = re.search(r"\bEndTime=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", out)
            if match:
                try:
                    return datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").timestamp()
                except ValueError:
                    pass
        return None

    def query_preempted(self, runner: Optional[Runner] = None) -> Optional[bool]:
        """True when Slurm has started preempting this job (scontrol's PreemptTime is set); None if unknown.

        The reliable way to tell a preemption from a time limit: preemption also moves EndTime to
        now + GraceTime, so the end time alone would make every preemption look like a timeout.
        """
        runner = runner or _run_text(self.env)
        out = runner(["scontrol", "show", "job", "-o", self.job_id])
        match = re.search(r"\bPreemptTime=(\S+)", out or "")
        if not match:
            return None
        return match.group(1) not in ("None", "Unknown", "(null)", "")

    def refresh_end_time(self, runner: Optional[Runner] = None) -> Optional[float]:
        end = self.query_end_time(runner)
        if end is not None:
            self.end_time = end
        return self.end_time


@dataclass
class LocalEnvironment(ClusterEnvironment):
    """One node, this machine; the job id and restart come from the local supervisor."""

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, master_port: int = 0) -> "LocalEnvironment":
        job_id = env.get(LOCAL_JOB_ID_ENV) or f"local{os.getpid()}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", job_id):
            raise ClusterEnvError(f"${LOCAL_JOB_ID_ENV}={job_id!r} may contain only letters, digits, '_', '.', '-'")
        restart = _int(env, (LOCAL_RESTART_ENV,), 0) or 0
        obj = cls(job_id=job_id, restart_count=restart, node_rank=0, num_nodes=1,
                  node_list=[socket.gethostname() or "localhost"], main_address="127.0.0.1",
                  main_port=derive_port(job_id, master_port, restart), end_time=None, env=dict(env))
        obj.validate()
        return obj

    def refresh_end_time(self, runner: Optional[Runner] = None) -> Optional[float]:
        return None


def detect_environment(env: Mapping[str, str], *, local: bool = False, master_port: int = 0,
                       resolver: Callable[[str], Optional[str]] = default_resolver) -> ClusterEnvironment:
    if local:
        return LocalEnvironment.from_env(env, master_port=master_port)
    return SlurmEnvironment.from_env(env, master_port=master_port, resolver=resolver)
