"""What a run directory says about training progress: the one parser behind `plot`, `status` and the live
console (`watch`, `console`). Files are only read (never locked, never written), and no paddle is imported.

Sources, all written by the jobs themselves:

- rank 0's trainer log of every attempt, `logs/attempt-<job>-<restart>/node0/workerlog.0`:
  `step N/M | loss X | ... | lr Y | ... | R steps/s | S samples/s | ...`, `valid at step N | loss X`,
  `resumed from PATH: step N`, `training steps A -> B`, and its WARNING/ERROR lines;
- each node launcher's `launcher.log` of an attempt: the node count (`num_nodes=N`), data preparation, the
  stop signals it received, its WARNING/ERROR lines;
- rank 0's heartbeat (`node0/control/heartbeat/rank0.json`, `train.heartbeat`): the step and phase of now;
- `attempts.jsonl`: how each attempt ended.

`LogTail` returns only what was appended since its last call, so a console that polls a long run reads each
byte once.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .rundir import AttemptRecord, RunDir
from .train.heartbeat import beat_file, heartbeat_dir  # standard library only

_N = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"
TRAIN_LINE = re.compile(rf"\bstep (?P<step>\d+)/(?P<max>\d+) \| loss (?P<loss>{_N}).*?\| lr (?P<lr>{_N})"
                        rf"(?:.*?\| (?P<rate>{_N}) steps/s)?(?:.*?\| (?P<samples>{_N}) samples/s)?")
VALID_LINE = re.compile(rf"\bvalid at step (?P<step>\d+) \| loss (?P<loss>{_N})")
RESUMED_LINE = re.compile(r"\bresumed from (?P<path>.*): step (?P<step>\d+)")
RESHAPED_LINE = re.compile(r"\b(?P<text>resumed on \d+ nodes?, was .*)$")  # elastic node counts (start.py)
START_LINE = re.compile(r"\btraining steps (?P<start>\d+) -> (?P<end>\d+)")
CHECKPOINT_LINE = re.compile(r"\bcheckpoint step (?P<step>\d+) saved to (?P<path>.*) in [\d.]+s")
WORKER_PROBLEM = re.compile(r"\[rank (?P<rank>\d+)\] (?P<level>WARNING|ERROR|CRITICAL) (?P<text>.*)$")
LAUNCHER_LINE = re.compile(r"^\S+ \[ernie_cluster\.launch node (?P<node>\d+)/\d+\] (?P<text>.*)$")
NUM_NODES = re.compile(r"\bnum_nodes=(?P<n>\d+)")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)")
ATTEMPT_DIR = re.compile(r"^attempt-(.+)-(\d+)$")
DATA_BUSY = ("tokenizing ", "building sample index maps", "waiting for node 0 to prepare the data")
READ_LIMIT = 4 << 20  # bytes one LogTail.read takes at most; the rest comes with the next call


@dataclass
class LogEvent:
    """Something a log line says happened: `kind` resume, nodes, checkpoint, signal, data, warning or error."""

    time: Optional[float]
    kind: str
    text: str


@dataclass
class AttemptSeries:
    name: str                       # attempt-<job>-<restart>
    job_id: str
    restart: int
    train: List[tuple] = field(default_factory=list)   # (step, loss, lr)
    valid: List[tuple] = field(default_factory=list)   # (step, loss)
    samples_per_s: List[float] = field(default_factory=list)
    resumed_from: Optional[int] = None
    record: Optional[AttemptRecord] = None
    start_step: Optional[int] = None     # `training steps A -> B`: the step this attempt's training began at
    max_steps: Optional[int] = None      # M of the latest `step N/M` line
    steps_per_s: Optional[float] = None  # the latest logged window's
    nodes: Optional[int] = None          # the attempt's node count (launcher log; the record once it ended)
    started: Optional[float] = None      # node 0's launcher's first line
    data: Optional[str] = None           # "preparing" | "ready" (node 0's data preparation)

    @property
    def median_samples_per_s(self) -> Optional[float]:
        return statistics.median(self.samples_per_s) if self.samples_per_s else None

    @property
    def first_step(self) -> Optional[int]:
        """Where this attempt's training began: the start line, else the checkpoint it resumed from."""
        return self.start_step if self.start_step is not None else self.resumed_from

    @property
    def reached(self) -> Optional[int]:
        """The last step this attempt finished: its record's when it ended, else its last logged step."""
        if self.record is not None and self.record.get("step") is not None:
            return int(self.record["step"])  # type: ignore[arg-type]
        return self.train[-1][0] if self.train else None


def line_time(line: str) -> Optional[float]:
    """The local time a log line starts with (`2026-11-30 00:30:32` or `2026-11-30T00:30:32`), as epoch seconds."""
    m = STAMP.match(line)
    if not m:
        return None
    try:
        return time.mktime(time.strptime(f"{m.group(1)} {m.group(2)}", "%Y-%m-%d %H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def parse_workerlog(text: str, series: AttemptSeries) -> List[LogEvent]:
    return parse_worker_lines(text.splitlines(), series)


def parse_worker_lines(lines: Sequence[str], series: AttemptSeries) -> List[LogEvent]:
    """Add rank 0's trainer log lines to `series`; return what they say happened."""
    events: List[LogEvent] = []
    for line in lines:
        m = TRAIN_LINE.search(line)
        if m:
            series.train.append((int(m["step"]), float(m["loss"]), float(m["lr"])))
            series.max_steps = int(m["max"])
            if m["samples"] is not None:
                series.samples_per_s.append(float(m["samples"]))
            if m["rate"] is not None:
                series.steps_per_s = float(m["rate"])
            continue
        m = VALID_LINE.search(line)
        if m:
            series.valid.append((int(m["step"]), float(m["loss"])))
            continue
        m = RESUMED_LINE.search(line)
        if m and series.resumed_from is None:
            series.resumed_from = int(m["step"])
            events.append(LogEvent(line_time(line), "resume", f"from step {m['step']} ({m['path'].strip()})"))
            continue
        m = RESHAPED_LINE.search(line)
        if m:
            events.append(LogEvent(line_time(line), "nodes", m["text"]))
            continue
        m = START_LINE.search(line)
        if m and series.start_step is None:
            series.start_step = int(m["start"])
            continue
        m = CHECKPOINT_LINE.search(line)
        if m:
            events.append(LogEvent(line_time(line), "checkpoint", f"step {m['step']} saved ({m['path'].strip()})"))
            continue
        m = WORKER_PROBLEM.search(line)
        if m:
            events.append(LogEvent(line_time(line), m["level"].lower().replace("critical", "error"), m["text"]))
    return events


def parse_launcher_lines(lines: Sequence[str], series: AttemptSeries) -> List[LogEvent]:
    """Add a node launcher's log lines to `series` (node count, data preparation); return what they say happened:
    stop signals, tokenizing, WARNING and ERROR lines (prefixed with the node when not node 0)."""
    events: List[LogEvent] = []
    for line in lines:
        m = LAUNCHER_LINE.match(line)
        if not m:
            continue
        node, text = int(m["node"]), m["text"]
        where = f"node {node}: " if node else ""
        when = line_time(line)
        n = NUM_NODES.search(text)
        if n and node == 0 and series.started is None:
            series.started = when
            series.nodes = int(n["n"]) if series.nodes is None else series.nodes  # the record's, once it ended
        elif node == 0 and text.startswith(DATA_BUSY):
            series.data = "preparing"
            if text.startswith("tokenizing "):
                events.append(LogEvent(when, "data", text))
        elif node == 0 and text.startswith("data ready"):
            series.data = "ready"
        elif text.startswith("received SIG"):
            events.append(LogEvent(when, "signal", where + text[len("received "):]))
        elif text.startswith(("WARNING: ", "ERROR: ")):
            level, _, rest = text.partition(": ")
            events.append(LogEvent(when, level.lower(), where + rest))
    return events


class LogTail:
    """The complete lines appended to a file since the last `read` (a partial last line waits for its end).
    A file that was replaced or truncated is read again from its start."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0
        self._partial = b""
        self._ident: Optional[Tuple[int, int]] = None

    def read(self) -> List[str]:
        try:
            st = os.stat(self.path)
        except OSError:
            return []
        ident = (st.st_dev, st.st_ino)
        if ident != self._ident or st.st_size < self.offset:
            self._ident, self.offset, self._partial = ident, 0, b""
        if st.st_size == self.offset:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(READ_LIMIT)
        except OSError:
            return []
        self.offset += len(data)
        pieces = (self._partial + data).split(b"\n")
        self._partial = pieces.pop()
        return [p.decode("utf-8", errors="replace").rstrip("\r") for p in pieces]


def attempt_dirs(run: RunDir) -> Dict[Tuple[str, int], Path]:
    """{(job id, restart): logs/attempt-<job>-<restart>} of every attempt that started a node launcher."""
    found: Dict[Tuple[str, int], Path] = {}
    try:
        entries = list(os.scandir(run.logs))
    except OSError:
        return found
    for entry in entries:
        m = ATTEMPT_DIR.match(entry.name)
        if m and entry.is_dir():
            found[(m.group(1), int(m.group(2)))] = Path(entry.path)
    return found


def record_key(record: AttemptRecord) -> Tuple[str, int]:
    return str(record.get("job_id")), int(record.get("restart") or 0)


def attempt_order(records: Sequence[AttemptRecord], dirs: Dict[Tuple[str, int], Path]) -> List[Tuple[str, int]]:
    """Attempts in the order attempts.jsonl recorded them; unrecorded ones (a running one) after, oldest first."""
    ordered: List[Tuple[str, int]] = []
    for r in records:
        if record_key(r) not in ordered:
            ordered.append(record_key(r))

    def age(key: Tuple[str, int]) -> Tuple[float, int]:
        try:
            return dirs[key].stat().st_mtime, key[1]
        except OSError:
            return 0.0, key[1]

    return ordered + sorted((k for k in dirs if k not in ordered), key=age)


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def collect(run: RunDir, *, launcher_logs: bool = False) -> List[AttemptSeries]:
    """Every attempt, read in full, in the order of `attempt_order`; with `launcher_logs`, node 0's launcher log too."""
    records = run.read_attempts()
    dirs = attempt_dirs(run)
    by_key = {record_key(r): r for r in records}
    out = []
    for key in attempt_order(records, dirs):
        s = AttemptSeries(f"attempt-{key[0]}-{key[1]}", key[0], key[1], record=by_key.get(key))
        node0 = dirs.get(key, run.logs / s.name) / "node0"
        parse_workerlog(read_text(node0 / "workerlog.0"), s)
        if launcher_logs:
            parse_launcher_lines(read_text(node0 / "launcher.log").splitlines(), s)
        if s.record is not None and s.record.get("nodes"):
            s.nodes = int(s.record["nodes"])  # type: ignore[arg-type]
        out.append(s)
    return out


def read_heartbeat(attempt_dir: Path) -> Optional[Dict[str, Any]]:
    """Rank 0's latest beat in an attempt (phase, step, time); None when there is none (yet)."""
    path = beat_file(heartbeat_dir(attempt_dir / "node0" / "control"), 0)
    try:
        beat = json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or replaced between stat and read
        return None
    return beat if isinstance(beat, dict) else None


# ------------------------------------------------------------------ figures ---

def eta_seconds(step: Optional[int], max_steps: Optional[int], steps_per_s: Optional[float]) -> Optional[float]:
    """Seconds until `max_steps` at `steps_per_s`; None when any of them is unknown or the rate is not positive."""
    if step is None or not max_steps or not steps_per_s or steps_per_s <= 0 or steps_per_s != steps_per_s:
        return None
    return max(0, max_steps - step) / steps_per_s


def fmt_duration(seconds: Optional[float]) -> str:
    """`0:00:21`, `12:03:04`, `2d 3:04:05`; `-` when unknown."""
    if seconds is None or seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "-"
    total = int(round(max(0.0, seconds)))
    days, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{days}d {h}:{m:02d}:{s:02d}" if days else f"{h}:{m:02d}:{s:02d}"


def steps_lost(spans: Sequence[Tuple[Optional[int], Optional[int]]]) -> int:
    """Steps computed again after resumes: for each attempt in order, (the step its training began at, the last
    step it finished), the part of its steps that an earlier attempt had finished already. An attempt that
    never trained (None) neither loses nor adds work."""
    done = 0
    lost = 0
    for first, reached in spans:
        if first is None:
            if reached is not None:
                done = max(done, reached)
            continue
        end = first if reached is None else max(first, reached)
        lost += max(0, min(done, end) - first)
        done = max(done, end)
    return lost


def run_steps_lost(attempts: Sequence[AttemptSeries]) -> int:
    return steps_lost([(a.first_step, a.reached) for a in attempts])


def final_loss(attempts: Sequence[AttemptSeries]) -> Optional[Tuple[int, float]]:
    """(step, loss) of the last logged training step of the run."""
    for a in reversed(attempts):
        if a.train:
            return a.train[-1][0], a.train[-1][1]
    return None


def figures(attempts: Sequence[AttemptSeries], max_steps: Optional[int],
            beat: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The run's latest figures: the current (last) attempt, its step and phase, the latest loss and
    throughput, the ETA (a live attempt only). `beat`: the current attempt's rank 0 heartbeat."""
    out: Dict[str, Any] = {"attempt": None, "attempts": len(attempts), "nodes": None, "phase": None, "step": None,
                           "max_steps": max_steps, "loss": None, "loss_step": None, "samples_per_s": None,
                           "steps_per_s": None, "eta_s": None, "steps_lost": run_steps_lost(attempts)}
    if not attempts:
        return out
    cur = attempts[-1]
    out.update(attempt=cur.name, nodes=cur.nodes, max_steps=max_steps or cur.max_steps)
    logged = [a for a in attempts if a.train]
    if logged:
        last = logged[-1]
        out.update(loss_step=last.train[-1][0], loss=last.train[-1][1], step=last.train[-1][0],
                   samples_per_s=last.samples_per_s[-1] if last.samples_per_s else None,
                   steps_per_s=last.steps_per_s)
    live = cur.record is None
    if live and cur.first_step is not None:  # resumed, nothing logged yet: not the last attempt's step
        out["step"] = max(out["step"] or 0, cur.first_step)
    if live and beat is not None:
        out["phase"] = beat.get("phase")
        if isinstance(beat.get("step"), int):
            out["step"] = max(out["step"] or 0, beat["step"])
    if live and cur.data == "preparing":
        out["phase"] = "data preparation"
    elif live and out["phase"] is None:
        out["phase"] = "training" if cur.train else "start-up"
    elif not live:
        out["phase"] = str(cur.record.get("reason") or "ended")  # type: ignore[union-attr]
    if live and cur.train:
        out["eta_s"] = eta_seconds(out["step"], out["max_steps"], cur.steps_per_s)
    return out


# What a pending job's reason means (Slurm's own words are shown too); others are shown as Slurm gives them.
PENDING_REASONS = {
    "Priority": "jobs of higher priority go first",
    "Resources": "waiting for nodes to become free",
    "BeginTime": "its begin time has not come",
    "JobHeldUser": "held: `scontrol release` it",
    "JobHeldAdmin": "held by an administrator",
    "ReqNodeNotAvail": "a node it needs is down, drained or reserved",
    "PartitionDown": "its partition is down",
    "QOSMaxJobsPerUserLimit": "your QOS allows no more running jobs",
    "AssocGrpCpuLimit": "your association's CPU limit is reached",
    "AssocGrpGRES": "your association's GPU limit is reached",
}


def fmt_time(value: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) if value is not None else "-"


def waiting_on(jobs: Sequence[Dict[str, Any]], figs: Dict[str, Any]) -> List[str]:
    """What the run waits for now, one line each: pending Slurm jobs (their reason and expected start; the
    conversion's dependency on training), a requeued job, node 0's data preparation, the trainers' start-up.
    `jobs`: status rows (kind, job_id, state, reason, expected_start); `figs`: `figures`."""
    out: List[str] = []
    train = next((j for j in jobs if j.get("kind") == "train"), None)
    for j in jobs:
        what = f"{'conversion' if j.get('kind') == 'convert' else 'training'} job {j.get('job_id')}"
        state, reason = str(j.get("state") or ""), str(j.get("reason") or "")
        if state == "PENDING" and reason.startswith("Dependency") and j.get("kind") == "convert" and train:
            out.append(f"{what} waits for training job {train.get('job_id')} to complete (afterok)")
        elif state == "PENDING":
            gloss = PENDING_REASONS.get(reason)
            start = j.get("expected_start")
            out.append(f"{what} is pending ({reason or 'no reason given'}{': ' + gloss if gloss else ''}); "
                       + (f"Slurm expects it to start at {fmt_time(start)}" if start
                          else "Slurm gives no expected start yet"))
        elif state in ("REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED"):
            out.append(f"{what} is {state}{' (' + reason + ')' if reason else ''}")
    if figs.get("phase") == "data preparation":
        out.append(f"data preparation on node 0 ({figs.get('attempt')}): tokenizing or building the sample index")
    elif figs.get("phase") == "start-up":
        out.append(f"the trainers of {figs.get('attempt')} are starting (imports, rendezvous, resuming)")
    return out
