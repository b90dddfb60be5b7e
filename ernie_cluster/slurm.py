"""The one module that runs Slurm's command-line tools, and the one parser for Slurm times.

Every call of sinfo, squeue, sacct, scontrol, scancel and (direct) sbatch goes through `call`:
the tool is found by name on PATH (the caller's `env` PATH when given, so stand-in executables in
tests work), runs under one of the timeouts of `TIMEOUTS`, and comes back as one of two results:

- `Reply`: the tool ran to its end. Its exit status may still be a refusal ("Invalid job id"):
  Slurm answered, and for a job that means "no such job" or "not in this list".
- `NoAnswer`: the tool is missing, could not start or ran past its timeout. Slurm said nothing,
  so a caller deciding "is this job alive?" must not read it as "finished" or "no such job".

Standard library only: `spec` imports the time parser from here, and the node launcher imports it
on every node before the trainers.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

# ---------------------------------------------------------------------------
# Times
# ---------------------------------------------------------------------------


def slurm_time_to_seconds(value: str, *, bare: str = "minutes") -> int:
    """Parse Slurm's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; ValueError for anything else.

    A bare number is minutes, as in `sbatch --time`; `bare="seconds"` reads it as seconds instead.
    """
    if not isinstance(value, str):
        raise ValueError("must be a string such as '24:00:00' or '2-00:00:00'")
    text = value.strip()
    if "-" in text:
        days_text, rest = text.split("-", 1)
        if not days_text.isdigit():
            raise ValueError(f"{value!r} is not a Slurm time")
        days = int(days_text)
        parts = rest.split(":")
        if not all(p.isdigit() for p in parts) or len(parts) > 3:
            raise ValueError(f"{value!r} is not a Slurm time")
        h, m, s = (list(map(int, parts)) + [0, 0])[:3]
        return ((days * 24 + h) * 60 + m) * 60 + s
    parts = text.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        raise ValueError(f"{value!r} is not a Slurm time; use minutes, 'MM:SS', 'HH:MM:SS' or 'D-HH:MM:SS'")
    nums = list(map(int, parts))
    if len(nums) == 1:
        return nums[0] * (60 if bare == "minutes" else 1)
    if len(nums) == 2:
        return nums[0] * 60 + nums[1]
    return (nums[0] * 60 + nums[1]) * 60 + nums[2]


def parse_timestamp(text: Optional[str]) -> Optional[float]:
    """A moment Slurm printed (`2026-11-29T21:50:56`, the controller's local time, as sacct Start/End, sinfo %H
    and scontrol's Reason=... [user@time] show it) as epoch seconds; None for Unknown, None and the like."""
    import datetime as _dt

    try:
        return _dt.datetime.strptime((text or "").strip(), "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def parse_duration(text: Optional[str]) -> Optional[int]:
    """A time Slurm printed (squeue %L / %l, sacct): `[D-]HH:MM:SS`, `MM:SS`, a bare number of seconds;
    None for UNLIMITED, NOT_SET, INVALID, Partition_Limit and anything else that is not a time."""
    try:
        return slurm_time_to_seconds(text or "", bare="seconds")
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# Running a tool
# ---------------------------------------------------------------------------

# The one timeout policy (seconds), by what the call is for:
TIMEOUTS: Dict[str, float] = {
    "probe": 15.0,   # an optional check with a fallback (partition names, a node's NodeAddr)
    "node": 20.0,    # a query on a compute node during an attempt (end time, preemption)
    "query": 30.0,   # job states and accounting from the login node
    "action": 60.0,  # a change: scancel, scontrol requeue, sbatch
}


@dataclass(frozen=True)
class Reply:
    """The tool ran to its end; `returncode` may still be a refusal ("Invalid job id")."""

    args: Tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""

    answered = True

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def error(self) -> str:
        """What a failed command said, for a message."""
        return (self.stderr or self.stdout).strip() or f"exit {self.returncode}"

    def rows(self, sep: str = "|") -> List[List[str]]:
        """Output lines split on `sep` (blank lines left out)."""
        return [line.split(sep) for line in self.stdout.splitlines() if line.strip()]


@dataclass(frozen=True)
class NoAnswer:
    """Slurm did not answer: the tool is not on PATH, could not start, or timed out. Not "no such job"."""

    args: Tuple[str, ...]
    reason: str

    answered = False
    ok = False
    returncode = None
    stdout = ""
    stderr = ""

    @property
    def error(self) -> str:
        return self.reason

    def rows(self, sep: str = "|") -> List[List[str]]:
        return []


Answer = Union[Reply, NoAnswer]


def call(args: Sequence[str], *, timeout: Union[str, float] = "query", env: Optional[Mapping[str, str]] = None,
         capture: bool = True, preexec_fn: Optional[Callable[[], None]] = None) -> Answer:
    """Run one Slurm command, found by name on PATH (`env`'s PATH when given; then it also runs with `env`)."""
    args = tuple(str(a) for a in args)
    seconds = TIMEOUTS[timeout] if isinstance(timeout, str) else timeout
    exe = shutil.which(args[0], path=env.get("PATH") if env is not None else None)
    if not exe:
        return NoAnswer(args, f"{args[0]} not found on PATH")
    try:
        proc = subprocess.run([exe, *args[1:]], capture_output=capture, text=True, timeout=seconds,
                              env=dict(env) if env is not None else None, preexec_fn=preexec_fn)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return NoAnswer(args, str(exc))
    return Reply(args, proc.returncode, proc.stdout or "", proc.stderr or "")


# ---------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------


def sinfo_partitions(*, env: Optional[Mapping[str, str]] = None, timeout: Union[str, float] = "probe"
                     ) -> Union[List[str], NoAnswer]:
    """Partition names as `sinfo -h -o %R` prints them; NoAnswer also when sinfo exits non-zero."""
    out = call(["sinfo", "-h", "-o", "%R"], timeout=timeout, env=env)
    if isinstance(out, NoAnswer):
        return out
    if not out.ok:
        return NoAnswer(out.args, out.error)
    return out.stdout.split()


def squeue(fmt: str, job_ids: Optional[Sequence[str]] = None, *, env: Optional[Mapping[str, str]] = None,
           timeout: Union[str, float] = "query", start: bool = False) -> Answer:
    """`squeue -h [--start] [-j IDS] -o FMT`: every queued job, or these (squeue exits non-zero for purged ids);
    `start`: pending jobs only, %S their expected start."""
    ids = ["-j", ",".join(job_ids)] if job_ids is not None else []
    return call(["squeue", "-h", *(["--start"] if start else []), *ids, "-o", fmt], timeout=timeout, env=env)


def sacct(fields: str, job_ids: Sequence[str], *, duplicates: bool = False, env: Optional[Mapping[str, str]] = None,
          timeout: Union[str, float] = "query") -> Answer:
    """`sacct -n -P -X [--duplicates] -j IDS -o FIELDS`: allocation records, `|`-separated."""
    dup = ["--duplicates"] if duplicates else []
    return call(["sacct", "-n", "-P", "-X", *dup, "-j", ",".join(job_ids), "-o", fields], timeout=timeout, env=env)


def show_job(job_id: str, *, one_line: bool = False, env: Optional[Mapping[str, str]] = None,
             timeout: Union[str, float] = "query") -> Answer:
    """`scontrol show job [-o] ID`."""
    return call(["scontrol", "show", "job", *(["-o"] if one_line else []), job_id], timeout=timeout, env=env)


def show_node(name: str, *, env: Optional[Mapping[str, str]] = None, timeout: Union[str, float] = "probe") -> Answer:
    """`scontrol show node NAME -o`."""
    return call(["scontrol", "show", "node", name, "-o"], timeout=timeout, env=env)


def scancel(job_ids: Sequence[str], *, signal: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
            timeout: Union[str, float] = "action", capture: bool = True,
            preexec_fn: Optional[Callable[[], None]] = None) -> Answer:
    """`scancel [--signal=SIG] IDS...`; `capture=False` leaves its messages on the terminal."""
    sig = [f"--signal={signal}"] if signal else []
    return call(["scancel", *sig, *job_ids], timeout=timeout, env=env, capture=capture, preexec_fn=preexec_fn)


def sbatch(options: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
           timeout: Union[str, float] = "action") -> Answer:
    """`sbatch --parsable OPTIONS...` (submit.py submits through submitit; this is for direct submissions)."""
    return call(["sbatch", "--parsable", *options], timeout=timeout, env=env)


def parsable_job_id(reply: Answer) -> str:
    """The job id `sbatch --parsable` printed (`ID` or `ID;CLUSTER`)."""
    return reply.stdout.strip().split(";")[0]


# ---------------------------------------------------------------------------
# Job state, as the submit side reads it
# ---------------------------------------------------------------------------


def job_states(job_ids: Sequence[str], *, env: Optional[Mapping[str, str]] = None) -> Dict[str, Tuple[str, str]]:
    """(state, pending reason) of each job: squeue for live jobs, sacct for finished ones.

    A job neither lists is left out when both answered (no such job), and is UNKNOWN when either did
    not answer (Slurm unreachable), so that a caller deciding "is this run alive?" never mistakes
    "could not ask" for "finished".
    """
    ids = [j for j in job_ids if j]
    if not ids:
        return {}
    jobs: Dict[str, Tuple[str, str]] = {}
    out = squeue("%i|%T|%r", ids, env=env)
    answered = out.answered  # squeue exits non-zero for purged job ids: only a crash or timeout means "no answer"
    for parts in out.rows():
        if len(parts) == 3:
            jobs[parts[0]] = (parts[1], "" if parts[2] in ("None", "(null)") else parts[2])
    missing = [j for j in ids if j not in jobs]
    if missing:
        acct = sacct("JobID,State", missing, env=env)
        answered = answered and acct.ok
        for parts in acct.rows():
            if len(parts) == 2 and parts[0] in missing:
                jobs[parts[0]] = (parts[1].split()[0], "")
        if not answered:
            for j in missing:
                jobs.setdefault(j, ("UNKNOWN", "squeue/sacct did not answer"))
    return jobs


def expected_starts(job_ids: Sequence[str], *, env: Optional[Mapping[str, str]] = None,
                    timeout: Union[str, float] = "query") -> Union[Dict[str, Optional[float]], NoAnswer]:
    """Slurm's estimate of when each pending job starts (`squeue --start`), as epoch seconds; None where Slurm
    has none (N/A: held, waiting on a dependency, not yet looked at by the scheduler). Jobs that are not
    pending are left out; NoAnswer when squeue did not answer."""
    ids = [j for j in job_ids if j]
    if not ids:
        return {}
    out = squeue("%i|%S", ids, env=env, timeout=timeout, start=True)
    if isinstance(out, NoAnswer):
        return out
    return {parts[0]: parse_timestamp(parts[1]) for parts in out.rows() if len(parts) == 2}


def job_attempts(job_id: str, *, env: Optional[Mapping[str, str]] = None,
                 timeout: Union[str, float] = "query") -> List[Dict[str, str]]:
    """Every attempt of a job as sacct records it (--duplicates lists requeued attempts too), oldest first."""
    out = sacct("JobID,State,ExitCode,Start,End,NodeList", [job_id], duplicates=True, env=env, timeout=timeout)
    return [dict(zip(("job_id", "state", "exit_code", "start", "end", "nodes"), parts))
            for parts in out.rows() if len(parts) == 6 and parts[0] == job_id]


def restart_count(job_id: str, *, env: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """`Restarts=` of `scontrol show job`; None when Slurm does not say."""
    out = show_job(job_id, env=env)
    for token in out.stdout.split():
        if token.startswith("Restarts="):
            return int(token.split("=", 1)[1])
    return None


# ---------------------------------------------------------------------------
# A job's nodes, as the node launcher reads and changes them
# ---------------------------------------------------------------------------


def parse_fields(text: str) -> Dict[str, str]:
    """`Key=Value` tokens of `scontrol show ... -o` (one line); a value runs to the next space."""
    out: Dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep and key and key not in out:
            out[key] = value
    return out


def job_fields(job_id: str, *, env: Optional[Mapping[str, str]] = None,
               timeout: Union[str, float] = "node") -> Optional[Dict[str, str]]:
    """`scontrol show job -o ID` as {Key: Value} (ExcNodeList, Partition, NumNodes, NodeList, JobState...);
    None when Slurm did not answer or refused."""
    out = show_job(job_id, one_line=True, env=env, timeout=timeout)
    if not out.ok or "JobId=" not in out.stdout:
        return None
    return parse_fields(out.stdout.splitlines()[0])


def update_job(job_id: str, *, env: Optional[Mapping[str, str]] = None, timeout: Union[str, float] = "action",
               preexec_fn: Optional[Callable[[], None]] = None, **fields: str) -> Answer:
    """`scontrol update JobId=ID Key=Value...` (e.g. ExcNodeList=n1,n2: it replaces the job's list)."""
    pairs = [f"{key}={value}" for key, value in fields.items()]
    return call(["scontrol", "update", f"JobId={job_id}", *pairs], timeout=timeout, env=env, preexec_fn=preexec_fn)


@dataclass(frozen=True)
class NodeState:
    """One node as `sinfo -N` prints it: its state (a trailing `*`: not responding) and its reason, if any."""

    name: str
    state: str  # sinfo %T, lower case: idle, allocated, mixed, down*, drained, idle*...
    reason: str = ""  # sinfo %E ("Not responding"); "" when none
    since: Optional[float] = None  # sinfo %H: when the reason was set

    @property
    def responding(self) -> bool:
        return not self.state.endswith("*")

    @property
    def usable(self) -> bool:
        """A job may be placed on it now: responding, not down, drained, draining, failing or powered off."""
        bad = ("down", "drain", "fail", "maint", "power", "reboot", "inval", "unknown", "future", "no_respond")
        return self.responding and not any(word in self.state for word in bad)


def node_states(*, nodes: Optional[Sequence[str]] = None, partition: Optional[str] = None,
                env: Optional[Mapping[str, str]] = None,
                timeout: Union[str, float] = "node") -> Union[Dict[str, NodeState], NoAnswer]:
    """{name: NodeState} from `sinfo -h -N [-n NODES] [-p PARTITION] -o %N|%T|%E|%H` (each node once);
    NoAnswer when sinfo did not answer or refused."""
    args = ["sinfo", "-h", "-N"]
    if nodes:
        args += ["-n", ",".join(nodes)]
    if partition:
        args += ["-p", partition]
    out = call([*args, "-o", "%N|%T|%E|%H"], timeout=timeout, env=env)
    if isinstance(out, NoAnswer):
        return out
    if not out.ok:
        return NoAnswer(out.args, out.error)
    states: Dict[str, NodeState] = {}
    for parts in out.rows():
        if len(parts) >= 4 and parts[0] not in states:
            reason = "|".join(parts[2:-1]).strip()  # a reason may hold the separator
            states[parts[0]] = NodeState(parts[0], parts[1].strip().lower(),
                                         "" if reason in ("none", "(null)") else reason, parse_timestamp(parts[-1]))
    return states
