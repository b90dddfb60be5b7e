"""The hang watchdog: reads the trainers' heartbeats (`ernie_cluster.train.heartbeat`), tells hung ranks and
stragglers apart, and records the stacks of a hung node's trainers.

Pure decision (`assess`) plus a small actor (`Watchdog`) the supervisor polls:

* silence = now - the rank's last beat. Every phase has its own limit (`Limits`): start-up, data,
  evaluation and checkpoint are long and beat-less, so they get fixed generous limits; training gets a
  limit learned from the rank's own median step time (`step_factor` x median, never under `step_s_min`;
  `warmup_s` until `min_step_samples` steps were measured: the first steps compile, tune and connect).
* a rank in `train` past its limit while another rank is still within a long phase is *waiting*, not hung:
  rank 0 writing a snapshot or a slow checkpoint shard holds the others in their next collective.
* the whole job makes no progress = every rank watched is past its limit.
* stragglers: ranks whose median busy time per step (their own work, not waiting for the others) is
  `straggler_skew` times the fastest rank's, and at least `straggler_floor_s` more (tiny CPU steps
  jitter by large ratios and small amounts).
* `dump_stacks` sends `DUMP_SIGNAL` and then SIGCONT: a SIGSTOPped or suspended trainer only runs its
  faulthandler handler once continued.

Stdlib only; no paddle.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..train.heartbeat import DUMP_SIGNAL, stack_file

STUCK_STATES = ("T", "t", "D")  # /proc states of a process that cannot be merely waiting: stopped, traced, in the kernel
SUMMARY = "watchdog.json"  # the actor's latest view, in the node's log directory (for `status`)
LONG_PHASES = ("start-up", "data", "evaluation", "checkpoint", "launch")
IDLE_PHASES = ("done",)  # a trainer that finished beating: nothing to watch


@dataclass(frozen=True)
class Beat:
    """One rank's last heartbeat (see ernie_cluster.train.heartbeat for the file)."""

    rank: int
    pid: int
    host: str
    phase: str
    step: Optional[int]
    time: float
    phase_started: float
    step_times: Tuple[float, ...] = ()
    busy_times: Tuple[float, ...] = ()

    @property
    def median_step_s(self) -> Optional[float]:
        return statistics.median(self.step_times) if self.step_times else None

    @property
    def median_busy_s(self) -> Optional[float]:
        times = self.busy_times or self.step_times
        return statistics.median(times) if times else None


def parse_beat(data: Mapping[str, Any]) -> Beat:
    """A `Beat` from a heartbeat file's JSON; KeyError/TypeError/ValueError when it is not one."""
    step = data.get("step")
    return Beat(rank=int(data["rank"]), pid=int(data["pid"]), host=str(data.get("host", "")),
                phase=str(data["phase"]), step=None if step is None else int(step), time=float(data["time"]),
                phase_started=float(data.get("phase_started", data["time"])),
                step_times=tuple(float(t) for t in data.get("step_times") or ()),
                busy_times=tuple(float(t) for t in data.get("busy_times") or ()))


def read_heartbeats(*directories: Union[str, Path]) -> Dict[int, Beat]:
    """rank -> last beat, from every `rank<k>.json` in `directories` (several: every node's, on shared
    storage). An unreadable file is skipped: the next poll reads the next version."""
    beats: Dict[int, Beat] = {}
    for directory in directories:
        try:
            paths = sorted(Path(directory).glob("rank*.json"))
        except OSError:
            continue
        for path in paths:
            try:
                beat = parse_beat(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            beats[beat.rank] = beat
    return beats


@dataclass(frozen=True)
class Limits:
    """Seconds of silence allowed per phase, and the straggler thresholds. Defaults for ERNIE 1.0 base on
    V100s (0.5-1 s steps), generous on purpose: a false "hung" costs a restart from the last checkpoint (and
    a requeue from cluster.requeue.max_failure_requeues), a late one only minutes of a 24 h allocation."""

    startup_s: float = 1800.0  # imports, NCCL init, resume of a 1.3 GB checkpoint (= the start watchdog's)
    data_s: float = 3600.0  # rank 0 builds the sample index of a large corpus, the others wait
    evaluation_s: float = 1800.0  # eval_iters batches; the final test split is 10x that
    checkpoint_s: float = 1800.0  # 1.3 GB to a loaded shared file system: a minute typically, 10+ at worst
    step_s_min: float = 300.0  # training: never tighter (shared-storage stalls on the mmap'd corpus, GC)
    step_factor: float = 20.0  # training: this many median step times
    warmup_s: float = 900.0  # training before min_step_samples steps: compile, autotune, first all-reduce
    min_step_samples: int = 5
    straggler_skew: float = 1.5
    straggler_floor_s: float = 0.1

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "Limits":
        """From a spec section's fields (unknown keys, such as `enabled`, are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    def for_beat(self, beat: Beat) -> Tuple[float, str]:
        """(the silence allowed in `beat`'s phase, why that much)."""
        fixed = {"start-up": self.startup_s, "launch": self.startup_s, "data": self.data_s,
                 "evaluation": self.evaluation_s, "checkpoint": self.checkpoint_s}
        if beat.phase in fixed:
            return fixed[beat.phase], f"{beat.phase} limit"
        if beat.phase != "train":  # a phase this watchdog does not know: the most generous fixed limit
            return max(fixed.values()), f"limit for an unknown phase {beat.phase!r}"
        median = beat.median_step_s
        if median is None or len(beat.step_times) < self.min_step_samples:
            return self.warmup_s, f"warm-up limit (fewer than {self.min_step_samples} steps measured)"
        learned = self.step_factor * median
        if learned < self.step_s_min:
            return self.step_s_min, f"floor step_s_min ({self.step_factor:g} x median step {median:.3g}s is less)"
        return learned, f"{self.step_factor:g} x median step {median:.3g}s"


@dataclass(frozen=True)
class Hung:
    rank: int
    pid: int
    host: str
    phase: str
    step: Optional[int]
    silent_s: float
    limit_s: float
    why: str  # where the limit came from
    state: str = ""  # the process state from /proc when the actor looked ("T" stopped, "D" in the kernel...)

    def describe(self) -> str:
        at = "" if self.step is None else f" after step {self.step}"
        state = f", process state {self.state}" if self.state else ""
        where = f" on {self.host}" if self.host else ""
        return (f"rank {self.rank} (pid {self.pid}{where}) silent {self.silent_s:.0f}s in {self.phase}{at} "
                f"(limit {self.limit_s:.0f}s: {self.why}{state})")


@dataclass(frozen=True)
class Straggler:
    rank: int
    host: str
    median_s: float
    fastest_rank: int
    fastest_s: float
    skew: float

    def describe(self) -> str:
        return (f"rank {self.rank}{' on ' + self.host if self.host else ''}: median busy time "
                f"{self.median_s:.3f}s/step vs {self.fastest_s:.3f}s on rank {self.fastest_rank} ({self.skew:.1f}x)")


@dataclass(frozen=True)
class Verdict:
    hung: Tuple[Hung, ...] = ()
    stragglers: Tuple[Straggler, ...] = ()
    waiting: Tuple[int, ...] = ()  # past their limit, but held by a peer still within a long phase
    all_silent: bool = False  # the whole job (every rank watched) makes no progress
    watched: int = 0

    @property
    def hung_ranks(self) -> List[int]:
        return [h.rank for h in self.hung]

    @property
    def last_step(self) -> Optional[int]:
        """The furthest step a hung rank reported: training resumes from the last checkpoint before it."""
        steps = [h.step for h in self.hung if h.step is not None]
        return max(steps) if steps else None

    @property
    def suspects(self) -> List[int]:
        """The hung ranks most likely at fault: stopped or stuck in the kernel, else the furthest behind (the
        others got one collective further before they blocked on it)."""
        stuck = [h.rank for h in self.hung if h.state[:1] in ("T", "t", "D")]
        if stuck or not self.hung:
            return stuck
        steps = [h.step if h.step is not None else -1 for h in self.hung]
        return [h.rank for h, s in zip(self.hung, steps) if s == min(steps)]

    def describe(self) -> str:
        if not self.hung:
            return "no hung rank"
        whole = "the whole job makes no progress: " if self.all_silent else ""
        return whole + "; ".join(h.describe() for h in self.hung)


def _missing_beat(rank: int, since: float) -> Beat:
    """A rank expected but never heard of: still starting (python, paddle import), counted from `since`."""
    return Beat(rank=rank, pid=0, host="", phase="launch", step=None, time=since, phase_started=since)


def assess(beats: Mapping[int, Beat], now: float, limits: Limits = Limits(), *, expected: Iterable[int] = (),
           watch_since: Optional[float] = None, states: Mapping[int, str] = {}) -> Verdict:  # noqa: B006 - read only
    """Which ranks are hung, waiting or straggling at wall time `now`.

    `expected`: ranks that should be beating (a missing one is in phase `launch`, silent since `watch_since`);
    `watch_since`: silence before this wall time is not counted (the watchdog started, or it was itself
    suspended then); None: all of it counts. `states`: rank -> process state (`process_state`), where
    known: a stopped rank (T) is never excused as waiting, whatever its peers do."""
    since = float("-inf") if watch_since is None else watch_since
    watched = {r: b for r, b in beats.items() if b.phase not in IDLE_PHASES}
    for rank in expected:
        if rank not in beats:
            watched[rank] = _missing_beat(rank, now if watch_since is None else watch_since)
    over: List[Hung] = []
    busy_peer = False  # some rank is in a long phase and still within its limit
    for rank, beat in sorted(watched.items()):
        silent = now - max(beat.time, since)
        limit, why = limits.for_beat(beat)
        if silent > limit:
            over.append(Hung(rank, beat.pid, beat.host, beat.phase, beat.step, silent, limit, why,
                             states.get(rank, "")))
        elif beat.phase in LONG_PHASES:
            busy_peer = True
    waiting = tuple(h.rank for h in over if busy_peer and h.phase == "train" and h.state[:1] not in ("T", "t"))
    hung = tuple(h for h in over if h.rank not in waiting)
    stragglers = find_stragglers({r: b for r, b in watched.items() if r not in {h.rank for h in over}}, limits)
    return Verdict(hung, stragglers, waiting, bool(watched) and len(hung) == len(watched), len(watched))


def find_stragglers(beats: Mapping[int, Beat], limits: Limits = Limits()) -> Tuple[Straggler, ...]:
    """Training ranks whose median busy time per step is both `straggler_skew` x and `straggler_floor_s`
    above the fastest rank's. Ranks with fewer than `min_step_samples` measured steps take no part."""
    medians = {r: b.median_busy_s for r, b in beats.items()
               if b.phase == "train" and len(b.busy_times or b.step_times) >= limits.min_step_samples}
    known = {r: m for r, m in medians.items() if m is not None}
    if len(known) < 2:
        return ()
    fastest_rank = min(known, key=lambda r: (known[r], r))
    fastest = known[fastest_rank]
    out = []
    for rank, median in sorted(known.items()):
        if median > limits.straggler_skew * fastest and median - fastest >= limits.straggler_floor_s:
            out.append(Straggler(rank, beats[rank].host, median, fastest_rank, fastest,
                                 median / fastest if fastest > 0 else float("inf")))
    return tuple(out)


def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (R, S, D, T, Z...), "" when unknown (gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return ""
    # The command name, in parentheses, may itself hold spaces or parentheses: the state follows the last ")".
    rest = stat[stat.rfind(")") + 1:].split()
    return rest[0] if rest else ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def dump_stacks(pids: Mapping[int, int], log_dir: Union[str, Path], signum: int = DUMP_SIGNAL,
                settle_s: float = 5.0, poll_s: float = 0.1) -> Dict[int, Path]:
    """Ask every trainer (rank -> pid) for its Python stacks (`heartbeat.install_stack_dump`); rank -> its
    stack file, for those whose file grew within `settle_s`. A trainer in uninterruptible sleep (D: a dead
    file system) may answer only later, or never; that is part of the finding."""
    files = {rank: stack_file(log_dir, rank) for rank in pids}
    before = {rank: _size(path) for rank, path in files.items()}
    for rank, pid in pids.items():
        for sig in (signum, signal.SIGCONT):  # CONT second: the dump signal is pending when it resumes
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                break
    deadline = time.monotonic() + settle_s
    grown: Dict[int, Path] = {}
    while True:
        grown = {r: p for r, p in files.items() if _size(p) > max(0, before[r])}
        if len(grown) == len(files) or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    time.sleep(min(poll_s, settle_s))  # faulthandler writes thread by thread: let the last lines land
    return grown


@dataclass
class Watchdog:
    """The supervisor's side: `check(pids)` on every poll of its loop; it reads the heartbeats every
    `check_every_s`, logs stragglers, writes SUMMARY for `status`, and when a rank of this node is hung
    records every local trainer's stacks and returns the verdict (the caller then ends the attempt).

    A trainer that has not beaten yet is left to the supervisor's start watchdog (ready.<rank> in time).

    When this node's hung ranks look merely blocked (not stopped, not in the kernel: waiting in a collective)
    while a rank of another node is hung too, this node waits `peer_grace_s` before it acts: the other node
    may find its rank stopped or stuck and act on it, which frees these ranks or ends the attempt (a failed
    peer), and the attempt then names the rank at fault rather than every rank that waited for it."""

    directories: Sequence[Path]  # every node's heartbeat directory, this node's first (the others: context)
    log_dir: Path  # this node's log directory: stack files and SUMMARY
    limits: Limits = field(default_factory=Limits)
    log: Callable[[str], None] = print
    stop_hung: bool = True  # False: a hung rank is only warned about (cluster.watchdog.enabled: false)
    check_every_s: float = 5.0
    suspend_gap_s: float = 60.0  # a longer pause of our own polling: we were stopped too (Slurm suspend)
    straggler_repeat_s: float = 600.0
    settle_s: float = 5.0
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    peers: Optional[Callable[[], Sequence[Path]]] = None  # more of the other nodes' directories, found per check
    peer_grace_s: float = 30.0

    def __post_init__(self) -> None:
        self.watch_since = self.clock()
        self.last_check: Optional[float] = None  # monotonic
        self.last_check_wall = self.watch_since
        self.last_stragglers: Tuple[int, ...] = ()
        self.stragglers_logged = float("-inf")
        self.fired: Optional[Verdict] = None
        self.warned: Tuple[int, ...] = ()
        self.deferred_since: Optional[float] = None  # monotonic: when this node began to wait for a peer node

    def check(self, pids: Mapping[int, int]) -> Optional[Verdict]:
        """`pids`: this node's live trainers (rank -> pid). The verdict once a local rank is hung, else None."""
        mono = self.monotonic()
        if self.fired is not None or (self.last_check is not None and mono - self.last_check < self.check_every_s):
            return None
        now = self.clock()
        # Either clock: the monotonic one runs on while we are SIGSTOPped (Slurm suspend), the wall clock
        # also across a suspended machine.
        gap = 0.0 if self.last_check is None else max(mono - self.last_check, now - self.last_check_wall)
        if gap > self.suspend_gap_s + self.check_every_s:
            self.watch_since = now  # our silence was everybody's: do not count it against them
            self.log(f"watchdog: no check for {gap:.0f}s (job suspended?): silence before now is not counted")
        self.last_check, self.last_check_wall = mono, now
        remote = [*self.directories[1:], *(self.peers() if self.peers is not None else ())]
        beats = read_heartbeats(*remote)
        # A trainer of this node that exited is not silent but gone: the exit records and classify_node tell.
        beats.update({r: b for r, b in read_heartbeats(self.directories[0]).items() if r in pids})
        states = {rank: process_state(pid) for rank, pid in pids.items()}
        verdict = assess(beats, now, self.limits, watch_since=self.watch_since, states=states)
        self._report_stragglers(verdict, mono)
        self._write_summary(verdict, beats, now)
        local = tuple(h.rank for h in verdict.hung if h.rank in pids)
        if not local:
            self.deferred_since = None
            return None
        if not self.stop_hung:
            if local != self.warned:
                self.log(f"WARNING: hung, not stopped (the watchdog is disabled): {verdict.describe()}")
            self.warned = local
            return None
        if self._defer_to_peer(verdict, pids, mono):
            return None
        return self._fire(verdict, pids)

    def _defer_to_peer(self, verdict: Verdict, pids: Mapping[int, int], mono: float) -> bool:
        """Wait (up to `peer_grace_s`) for another node to act first? See the class's docstring."""
        stuck = [h.rank for h in verdict.hung if h.rank in pids and h.state[:1] in STUCK_STATES]
        remote = [h.rank for h in verdict.hung if h.rank not in pids]
        if stuck or not remote or self.peer_grace_s <= 0:
            return False
        if self.deferred_since is None:
            self.deferred_since = mono
            self.log(f"watchdog: {verdict.describe()}; ranks {sorted(pids)} here only wait, ranks {remote} on "
                     f"other nodes are hung too: giving their nodes {self.peer_grace_s:.0f}s to act first")
        return mono - self.deferred_since < self.peer_grace_s

    def _fire(self, verdict: Verdict, pids: Mapping[int, int]) -> Verdict:
        """A local rank is hung: log it, record every local trainer's stacks, remember the verdict."""
        self.fired = verdict
        self.log(f"ERROR: hung: {verdict.describe()}")
        if verdict.suspects:
            self.log(f"watchdog: most likely at fault: ranks {verdict.suspects}")
        got = dump_stacks(pids, self.log_dir, settle_s=self.settle_s)
        for rank in sorted(pids):
            where = got.get(rank)
            self.log(f"watchdog: rank {rank} stacks {'in ' + str(where) if where else 'not written (no answer)'}")
        return verdict

    def _report_stragglers(self, verdict: Verdict, mono: float) -> None:
        ranks = tuple(s.rank for s in verdict.stragglers)
        if ranks == self.last_stragglers and (not ranks or mono - self.stragglers_logged < self.straggler_repeat_s):
            return
        self.last_stragglers, self.stragglers_logged = ranks, mono
        if not ranks:
            self.log("watchdog: no straggler any more")
            return
        for s in verdict.stragglers:
            self.log(f"WARNING: straggler {s.describe()}")

    def _write_summary(self, verdict: Verdict, beats: Mapping[int, Beat], now: float) -> None:
        summary = {"time": now, "watch_since": self.watch_since, "all_silent": verdict.all_silent,
                   "hung": [asdict(h) for h in verdict.hung], "waiting": list(verdict.waiting),
                   "stragglers": [asdict(s) for s in verdict.stragglers],
                   "ranks": {str(r): {"phase": b.phase, "step": b.step, "host": b.host,
                                      "silent_s": round(now - b.time, 1), "median_step_s": b.median_step_s,
                                      "median_busy_s": b.median_busy_s} for r, b in sorted(beats.items())}}
        path = Path(self.log_dir) / SUMMARY
        tmp = path.with_name(f".{SUMMARY}.tmp")
        try:
            tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            pass  # a summary for `status` only: never a reason to stop watching


def read_summary(log_dir: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """A node's latest SUMMARY (for `status`), None when there is none or it is unreadable."""
    try:
        data = json.loads((Path(log_dir) / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
