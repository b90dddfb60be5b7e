"""How an attempt ended and whether it may be requeued: pure functions over the trainers' exit records.

Reasons (the `reason` of an attempts.jsonl record):
  completed  every trainer wrote {"reason": "completed"}
  stopped    trainers saved at a step boundary and stopped after a signal; `cause` says why:
             "timeout" (the allocation's end was near when the signal came), "preempted" (it was not),
             or "signal" off Slurm
  failed     a trainer reported "failed" (non-finite loss, crash...), a trainer left no exit record,
             no trainer started, or the launcher could not run: never requeued

Timeout versus preemption is decided from the time left in the allocation when the stop signal
arrived, never from the order of signals (Slurm changed that order between versions).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

from ..spec import RequeuePolicy

TIMEOUT_MARGIN_S = 90.0  # Slurm may send the --signal warning up to 60 s early; squeue adds latency

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_LOCKED = 3
EXIT_DATA = 4
EXIT_REQUEUE_DENIED = 5
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped cleanly; Slurm requeues it / the local supervisor may restart it

_PID_RE = re.compile(r"^trainer\.(\d+)\.pid$")
_EXIT_RE = re.compile(r"^exit\.(\d+)\.json$")
_READY_RE = re.compile(r"^ready\.(\d+)$")


@dataclass
class ControlState:
    """What the trainers of one node left in their control directory."""

    pids: Dict[int, int] = field(default_factory=dict)  # global rank -> pid
    exits: Dict[int, Dict[str, Any]] = field(default_factory=dict)  # global rank -> exit record
    ready: List[int] = field(default_factory=list)  # ranks past their first collective (the rendezvous worked)
    unreadable: List[str] = field(default_factory=list)


def read_control_dir(path: Path) -> ControlState:
    state = ControlState()
    try:
        entries = sorted(Path(path).iterdir())
    except OSError:
        return state
    for entry in entries:
        m = _PID_RE.match(entry.name)
        if m:
            try:
                state.pids[int(m.group(1))] = int(entry.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                state.unreadable.append(entry.name)
            continue
        m = _READY_RE.match(entry.name)
        if m:
            state.ready.append(int(m.group(1)))
            continue
        m = _EXIT_RE.match(entry.name)
        if m:
            try:
                record = json.loads(entry.read_text())
                if not isinstance(record, dict):
                    raise ValueError("not an object")
                state.exits[int(m.group(1))] = record
            except (OSError, ValueError):
                state.unreadable.append(entry.name)
    return state


@dataclass
class NodeOutcome:
    reason: str  # completed | stopped | failed
    step: Optional[int] = None
    message: str = ""
    signal: Optional[str] = None  # the signal the trainers reported stopping on
    stopped_at: Optional[float] = None  # earliest exit-record time among stopped trainers
    retryable: bool = False  # failed in a way a new attempt may not repeat (killed, crashed, hung rendezvous)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _step(record: Mapping[str, Any]) -> Optional[int]:
    value = record.get("step")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def classify_node(control: ControlState, expected: int, launcher_rc: Optional[int], *,
                  stop_requested: bool = False, note: str = "") -> NodeOutcome:
    """Classify one node's trainers from their exit records (the launcher's exit code only explains)."""
    rc_text = "" if launcher_rc is None else f" (launcher exit code {launcher_rc})"
    exits = control.exits
    steps = [s for s in (_step(r) for r in exits.values()) if s is not None]
    step = max(steps) if steps else None
    if not exits and not control.pids:
        why = note or "no trainer started"
        return NodeOutcome("failed", None, f"{why}{rc_text}; see workerlog.* in the attempt's log directory",
                           retryable=True)
    missing = sorted(set(control.pids) - set(exits))
    if len(exits) < expected or missing:
        missing_text = f"ranks {missing}" if missing else f"{expected - len(exits)} of {expected} trainers"
        why = f"{missing_text} ended without an exit record{rc_text}"
        if note:
            why = f"{note}; {why}"
        return NodeOutcome("failed", step, why, retryable=True)  # killed: OOM, a lost peer, NCCL abort
    reasons = {rank: str(r.get("reason")) for rank, r in exits.items()}
    failed = {rank: r for rank, r in exits.items() if reasons[rank] not in ("completed", "stopped")}
    if failed:
        details = "; ".join(f"rank {rank}: {r.get('error') or r.get('reason')}" for rank, r in sorted(failed.items()))
        return NodeOutcome("failed", step, f"{details}{rc_text}",
                           retryable=all(r.get("kind") == "crash" for r in failed.values()))
    if all(r == "completed" for r in reasons.values()):
        extra = f"; note: launcher exit code {launcher_rc}" if launcher_rc not in (0, None) else ""
        return NodeOutcome("completed", step, f"all {len(exits)} trainers completed{extra}")
    stopped = [r for r in exits.values() if r.get("reason") == "stopped"]
    signals = sorted({str(r["signal"]) for r in stopped if r.get("signal")})
    times = [float(r["time"]) for r in stopped if isinstance(r.get("time"), (int, float))]
    how = "after a stop request" if stop_requested else "on their own stop signal"
    return NodeOutcome("stopped", step, f"{len(stopped)} trainer(s) saved and stopped {how}{rc_text}",
                       signal=signals[0] if signals else None, stopped_at=min(times) if times else None)


def combine_nodes(outcomes: Mapping[int, NodeOutcome]) -> NodeOutcome:
    """The attempt's outcome from every node's: any failure fails it; completed only if all completed."""
    if not outcomes:
        return NodeOutcome("failed", None, "no node reported")
    steps = [o.step for o in outcomes.values() if o.step is not None]
    step = max(steps) if steps else None
    failed = {k: o for k, o in outcomes.items() if o.reason == "failed"}
    if failed:
        msg = "; ".join(f"node {k}: {o.message}" for k, o in sorted(failed.items()))
        return NodeOutcome("failed", step, msg, retryable=all(o.retryable for o in failed.values()))
    if all(o.reason == "completed" for o in outcomes.values()):
        return NodeOutcome("completed", step, next(iter(outcomes.values())).message if len(outcomes) == 1
                           else f"all {len(outcomes)} nodes completed")
    stopped = [o for o in outcomes.values() if o.reason == "stopped"]
    times = [o.stopped_at for o in stopped if o.stopped_at is not None]
    sigs = [o.signal for o in stopped if o.signal]
    return NodeOutcome("stopped", step, stopped[0].message if len(outcomes) == 1
                       else f"{len(stopped)} of {len(outcomes)} nodes stopped at a step boundary",
                       signal=sigs[0] if sigs else None, stopped_at=min(times) if times else None)


def stop_cause(remaining_s: Optional[float], signal_lead_s: int, margin_s: float = TIMEOUT_MARGIN_S,
               preempted: Optional[bool] = None) -> str:
    """'preempted' when Slurm says so (PreemptTime set); else 'timeout' when the time limit was about to
    end when the stop signal came (squeue's time left = limit - elapsed), else 'preempted'."""
    if preempted:
        return "preempted"
    if remaining_s is None:
        return "preempted"
    return "timeout" if remaining_s <= signal_lead_s + margin_s else "preempted"


@dataclass
class RequeueDecision:
    requeue: bool
    action: str  # none | requeue | requeue-denied
    why: str = ""


def requeues_used(attempts: Iterable[Mapping[str, Any]], job_id: str, **match: str) -> int:
    """Requeues of `job_id` so far among the attempts whose fields equal `match` (e.g. cause="timeout")."""
    return sum(1 for a in attempts if str(a.get("job_id")) == str(job_id)
               and a.get("action") in ("requeue", "requeue-failed") and all(a.get(k) == v for k, v in match.items()))


def decide_requeue(reason: str, cause: Optional[str], restart_count: int, policy: RequeuePolicy,
                   attempts: Iterable[Mapping[str, Any]] = (), job_id: str = "", *,
                   retryable: bool = False) -> RequeueDecision:
    """May this attempt be requeued under `cluster.requeue`? A stopped one within the caps; a failed one only
    when the failure may be transient and `max_failure_requeues` allows; a completed one never."""
    if reason == "failed":
        cap = policy.max_failure_requeues
        if not (retryable and policy.enabled and cap > 0):
            return RequeueDecision(False, "none", "")
        used = requeues_used(attempts, job_id, reason="failed")
        if used >= cap or restart_count >= policy.max_requeues:
            return RequeueDecision(False, "none", f"{used} failure requeue(s) of job {job_id} already reached "
                                                  f"cluster.requeue.max_failure_requeues={cap} (or max_requeues)")
        return RequeueDecision(True, "requeue", f"failure: retry {used + 1} of at most {cap}")
    if reason != "stopped":
        return RequeueDecision(False, "none", "")
    if not policy.enabled:
        return RequeueDecision(False, "requeue-denied", "cluster.requeue.enabled is false")
    if restart_count >= policy.max_requeues:
        return RequeueDecision(False, "requeue-denied",
                               f"restart {restart_count} reached cluster.requeue.max_requeues={policy.max_requeues}")
    if cause == "timeout":
        cap = policy.max_timeout_requeues if policy.max_timeout_requeues is not None else policy.max_requeues
        used = requeues_used(attempts, job_id, cause="timeout")
        if used >= cap:
            return RequeueDecision(False, "requeue-denied",
                                   f"{used} time-limit requeue(s) of job {job_id} already reached "
                                   f"cluster.requeue.max_timeout_requeues={cap}")
    return RequeueDecision(True, "requeue", f"{cause or 'stopped'}: restart {restart_count + 1} of at most "
                                            f"{policy.max_requeues}")


def exit_code_for(reason: str, action: str) -> int:
    if reason == "completed":
        return EXIT_OK
    if reason == "stopped":
        return EXIT_REQUEUE_DENIED if action == "requeue-denied" else EXIT_STOPPED
    return EXIT_STOPPED if action == "requeue" else EXIT_FAILED  # a failure being retried
