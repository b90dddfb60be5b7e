"""How an attempt ended and whether it may be requeued: pure functions over the trainers' exit records.

`classify_node` reads one node's trainers, `combine_nodes` joins the nodes, and `decide_attempt` concludes
the attempt: its cause, the requeue policy's verdict, every node's exit code and the attempts.jsonl record.
The node launcher (`node`) gathers the facts and carries out the verdict (scontrol requeue, the records).

Reasons (the `reason` of an attempts.jsonl record):
  completed  every trainer wrote {"reason": "completed"}
  stopped    trainers saved at a step boundary and stopped: no step lost
  failed     a trainer reported "failed" (non-finite loss, crash...), a trainer left no exit record,
             no trainer started or the start hung, data preparation failed, or paddle's launcher could
             not be built or started; one whose cause may be transient (below) may still be requeued

Causes (the `cause`: what ended the attempt, and which cap of `cluster.requeue` a requeue counts against):
  preempted      Slurm's warning signal, not near the time limit    max_requeues
  timeout        Slurm's warning signal near the time limit         max_timeout_requeues (and max_requeues)
  signal         a stop signal off Slurm (the local backend)        max_requeues
  cancelled      `python -m ernie_cluster cancel`                   never requeued
  launcher-died  paddle.distributed.launch exited while its trainers still ran (no outside signal)
  trainer-died   a trainer ended without an exit record (killed: OOM, a lost peer...); `ranks` says which
  crashed        a trainer reported an exception; `ranks` says which
  hung           the trainers were not past their first collective in time (start watchdog)
  start-failed   no trainer started
  node-failed    a node of the allocation died (Slurm: NODE_FAIL; its slurmd stopped answering)
                 (these six may be transient: the attempt they ended, failed or stopped, is requeued
                 within max_failure_requeues, and max_requeues)
  preflight-failed  a node failed its pre-flight (`preflight`): requeued like the six above when the
                 failure is a node's (it is then left out of the requeued job), never when every node
                 failed the same check (the environment's or the run directory's fault)
  nonfinite, setup, data, error
                 failures a new attempt would repeat: never requeued
  peer-failed    this node stopped because another node failed (a node's view only)

Which node is at fault (`NodeOutcome.nodes`, for the exclusion of bad nodes: `node_faults`): the failed
nodes with the attempt's cause, and of those the one whose trainers failed first (`failed_at`): a trainer
that crashes makes its peers on other nodes fail a moment later with errors of their own.

Timeout versus preemption is decided from the time left in the allocation when the stop signal
arrived, never from the order of signals (Slurm changed that order between versions).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from ..rundir import AttemptRecord
from ..spec import RequeuePolicy

TIMEOUT_MARGIN_S = 90.0  # Slurm may send the --signal warning up to 60 s early; squeue adds latency

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_LOCKED = 3
EXIT_DATA = 4
EXIT_REQUEUE_DENIED = 5
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped cleanly, or a transient failure being retried: requeue requested

# Failures a new attempt may not repeat; "failure" is what records said before causes were told apart.
TRANSIENT_CAUSES = ("launcher-died", "trainer-died", "crashed", "hung", "start-failed", "node-failed", "failure")
# Which failed node's cause names the attempt's: a killed trainer makes its peers crash or hang, and a
# node stopped by a failed peer only follows it.
_FAILURE_ORDER = ("nonfinite", "setup", "data", "error", "preflight-failed", "node-failed", "trainer-died", "crashed",
                  "hung", "start-failed", "launcher-died", "peer-failed")

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
    signal: Optional[str] = None  # the trainers' stop signal; the node launcher keeps only one from outside
    stopped_at: Optional[float] = None  # earliest exit-record time among stopped trainers
    retryable: bool = False  # failed in a way a new attempt may not repeat (killed, crashed, hung rendezvous)
    cause: Optional[str] = None  # what ended it when no outside signal did (see the module's docstring)
    ranks: List[int] = field(default_factory=list)  # the trainers at fault (trainer-died, crashed...)
    failed_at: Optional[float] = None  # when its first trainer failed (exit record time, or last seen alive)
    nodes: List[int] = field(default_factory=list)  # `combine_nodes`: the node ranks at fault

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NodeOutcome":
        ranks, nodes, failed_at = data.get("ranks"), data.get("nodes"), data.get("failed_at")
        return cls(str(data.get("reason", "failed")), data.get("step"), str(data.get("message", "")),
                   data.get("signal"), data.get("stopped_at"), bool(data.get("retryable", False)),
                   data.get("cause"), [int(r) for r in ranks] if isinstance(ranks, list) else [],
                   float(failed_at) if isinstance(failed_at, (int, float)) else None,
                   [int(k) for k in nodes] if isinstance(nodes, list) else [])


def _step(record: Mapping[str, Any]) -> Optional[int]:
    value = record.get("step")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def classify_node(control: ControlState, expected: int, launcher_rc: Optional[int], *,
                  stop_requested: bool = False, note: str = "",
                  alive_until: Optional[Mapping[int, float]] = None) -> NodeOutcome:
    """Classify one node's trainers from their exit records (the launcher's exit code only explains).

    `alive_until`: rank -> when the node launcher last saw that trainer running. With it, a trainer that
    reported a failure before another one vanished is the cause (paddle kills the rest after a failure);
    without it, or at a tie, a vanished trainer is (the others then fail on their collectives)."""
    rc_text = "" if launcher_rc is None else f" (launcher exit code {launcher_rc})"
    exits = control.exits
    steps = [s for s in (_step(r) for r in exits.values()) if s is not None]
    step = max(steps) if steps else None
    if not exits and not control.pids:
        why = note or "no trainer started"
        return NodeOutcome("failed", None, f"{why}{rc_text}; see workerlog.* in the attempt's log directory",
                           retryable=True, cause="start-failed")
    missing = sorted(set(control.pids) - set(exits))
    reasons = {rank: str(r.get("reason")) for rank, r in exits.items()}
    failed = {rank: r for rank, r in exits.items() if reasons[rank] not in ("completed", "stopped")}
    inf = float("inf")
    vanished_at = min((alive_until.get(r, 0.0) for r in missing), default=inf) if alive_until is not None else -inf
    reported_at = min((float(r["time"]) if isinstance(r.get("time"), (int, float)) else inf
                       for r in failed.values()), default=inf)
    if (len(exits) < expected or missing) and not (failed and reported_at < vanished_at):
        missing_text = f"ranks {missing}" if missing else f"{expected - len(exits)} of {expected} trainers"
        why = f"{missing_text} ended without an exit record{rc_text}"
        if note:
            why = f"{note}; {why}"
        # killed: OOM, a lost peer, NCCL abort
        seen = vanished_at if missing and alive_until is not None and 0 < vanished_at < inf else None
        return NodeOutcome("failed", step, why, retryable=True, cause="trainer-died", ranks=missing, failed_at=seen)
    if failed:
        details = "; ".join(f"rank {rank}: {r.get('error') or r.get('reason')}" for rank, r in sorted(failed.items()))
        if missing:
            details += f"; then ranks {missing} ended without an exit record"
        kinds = {str(r.get("kind")) for r in failed.values()}
        cause = "crashed" if kinds == {"crash"} else next((k for k in _FAILURE_ORDER if k in kinds), "error")
        return NodeOutcome("failed", step, f"{details}{rc_text}", retryable=cause == "crashed", cause=cause,
                           ranks=sorted(failed), failed_at=reported_at if reported_at != inf else None)
    if all(r == "completed" for r in reasons.values()):
        extra = f"; note: launcher exit code {launcher_rc}" if launcher_rc not in (0, None) else ""
        return NodeOutcome("completed", step, f"all {len(exits)} trainers completed{extra}")
    stopped = [r for r in exits.values() if r.get("reason") == "stopped"]
    # "peer": the stop came from another rank, which names the real signal
    signals = sorted({str(r["signal"]) for r in stopped if r.get("signal") and r.get("signal") != "peer"})
    times = [float(r["time"]) for r in stopped if isinstance(r.get("time"), (int, float))]
    how = "after a stop request" if stop_requested else "on their own stop signal"
    return NodeOutcome("stopped", step, f"{len(stopped)} trainer(s) saved and stopped {how}{rc_text}",
                       signal=signals[0] if signals else None, stopped_at=min(times) if times else None)


def after_launcher_death(outcome: NodeOutcome, launcher_rc: Optional[int], orphaned: List[int]) -> NodeOutcome:
    """The paddle launcher exited while trainer ranks `orphaned` ran, before any stop signal: it died
    (killed, OOM, a bug of its own). A trainer that had failed already is the cause instead (paddle exits
    after one)."""
    died = f"paddle.distributed.launch exited (code {launcher_rc}) while trainer ranks {orphaned} still ran"
    if outcome.reason == "stopped":
        return replace(outcome, cause="launcher-died",
                       message=f"{died}; they saved at step {outcome.step} and stopped: no step lost")
    if outcome.cause == "trainer-died" and set(outcome.ranks) <= set(orphaned):
        # they could not stop cleanly once it was gone
        return replace(outcome, cause="launcher-died", message=f"{died}; {outcome.message}")
    return outcome


def combine_nodes(outcomes: Mapping[int, NodeOutcome]) -> NodeOutcome:
    """The attempt's outcome from every node's: any failure fails it; completed only if all completed."""
    if not outcomes:
        return NodeOutcome("failed", None, "no node reported", cause="error")
    steps = [o.step for o in outcomes.values() if o.step is not None]
    step = max(steps) if steps else None
    sigs = [outcomes[k].signal for k in sorted(outcomes) if outcomes[k].signal]  # node 0's first
    failed = {k: o for k, o in outcomes.items() if o.reason == "failed"}
    if failed:
        msg = "; ".join(f"node {k}: {o.message}" for k, o in sorted(failed.items()))
        causes = [o.cause for o in failed.values()]
        cause = next((c for c in _FAILURE_ORDER if c in causes), next((c for c in causes if c), None))
        first = _first_failed({k: o for k, o in failed.items() if o.cause == cause})
        ranks = sorted({r for o in first.values() for r in o.ranks})
        times = [o.failed_at for o in first.values() if o.failed_at is not None]
        return NodeOutcome("failed", step, msg, retryable=all(o.retryable for o in failed.values()), cause=cause,
                           ranks=ranks, signal=sigs[0] if sigs else None, failed_at=min(times) if times else None,
                           nodes=sorted(first))
    if all(o.reason == "completed" for o in outcomes.values()):
        return NodeOutcome("completed", step, next(iter(outcomes.values())).message if len(outcomes) == 1
                           else f"all {len(outcomes)} nodes completed", signal=sigs[0] if sigs else None)
    stopped = [o for o in outcomes.values() if o.reason == "stopped"]
    times = [o.stopped_at for o in stopped if o.stopped_at is not None]
    died = {k: o for k, o in sorted(outcomes.items()) if o.reason == "stopped" and o.cause == "launcher-died"}
    if len(outcomes) == 1:
        message = stopped[0].message
    elif died:
        message = "; ".join(f"node {k}: {o.message}" for k, o in died.items())
    else:
        message = f"{len(stopped)} of {len(outcomes)} nodes stopped at a step boundary"
    return NodeOutcome("stopped", step, message, signal=sigs[0] if sigs else None,
                       stopped_at=min(times) if times else None, cause="launcher-died" if died else None)


def _first_failed(nodes: Mapping[int, NodeOutcome]) -> Dict[int, NodeOutcome]:
    """Of the nodes that failed with the attempt's cause, the one(s) whose trainers failed first, when every one
    of them says when; else all of them."""
    times = [o.failed_at for o in nodes.values()]
    if len(nodes) < 2 or any(t is None for t in times):
        return dict(nodes)
    earliest = min(t for t in times if t is not None)
    return {k: o for k, o in nodes.items() if o.failed_at == earliest}


def stop_cause(remaining_s: Optional[float], signal_lead_s: int, margin_s: float = TIMEOUT_MARGIN_S,
               preempted: Optional[bool] = None) -> str:
    """'preempted' when Slurm says so (PreemptTime set); else 'timeout' when the time limit was about to
    end when the stop signal came (squeue's time left = limit - elapsed), else 'preempted'."""
    if preempted:
        return "preempted"
    if remaining_s is None:
        return "preempted"
    return "timeout" if remaining_s <= signal_lead_s + margin_s else "preempted"


def attempt_cause(total: NodeOutcome, *, on_slurm: bool, signal_lead_s: int, cancelled: bool = False,
                  remaining_s: Optional[float] = None, preempted: Optional[bool] = None,
                  margin_s: float = TIMEOUT_MARGIN_S) -> Optional[str]:
    """What ended the attempt: a failure's own cause (or launcher-died); for a stop with none, `cancel`, else
    the outside signal: on Slurm a preemption or the time limit (`stop_cause`), off Slurm 'signal'."""
    if total.reason != "stopped" or total.cause is not None:
        return total.cause
    if cancelled:
        return "cancelled"
    if on_slurm:
        return stop_cause(remaining_s, signal_lead_s, margin_s, preempted=preempted)
    return "signal"


@dataclass
class RequeueDecision:
    requeue: bool
    action: str  # none | requeue | requeue-denied
    why: str = ""


def is_failure(record: Mapping[str, Any]) -> bool:
    """Counts against max_failure_requeues: a failed attempt, or one a transient failure ended."""
    return record.get("reason") == "failed" or record.get("cause") in TRANSIENT_CAUSES


def requeues_used(attempts: Iterable[AttemptRecord], job_id: str,
                  where: Optional[Callable[[Mapping[str, Any]], bool]] = None, **match: str) -> int:
    """Requeues of `job_id` so far among the attempts whose fields equal `match` (e.g. cause="timeout")
    and, given `where`, for which it holds."""
    return sum(1 for a in attempts if str(a.get("job_id")) == str(job_id)
               and a.get("action") in ("requeue", "requeue-failed") and all(a.get(k) == v for k, v in match.items())
               and (where is None or where(a)))


def decide_requeue(reason: str, cause: Optional[str], restart_count: int, policy: RequeuePolicy,
                   attempts: Iterable[AttemptRecord] = (), job_id: str = "", *,
                   retryable: bool = False) -> RequeueDecision:
    """May this attempt be requeued under `cluster.requeue`? Every requeue counts against max_requeues;
    a transient failure (TRANSIENT_CAUSES, or `retryable`) also against max_failure_requeues, a time limit
    against max_timeout_requeues. A deterministic failure or a completed attempt: never.

    A denied stop is 'requeue-denied' (the trainers saved: exit 5); a denied failure is 'none'."""
    if reason not in ("stopped", "failed"):
        return RequeueDecision(False, "none", "")
    denied = "requeue-denied" if reason == "stopped" else "none"
    transient = cause in TRANSIENT_CAUSES or (reason == "failed" and retryable)
    if reason == "failed" and not transient:
        return RequeueDecision(False, "none", "")
    if not policy.enabled:
        return RequeueDecision(False, denied, "cluster.requeue.enabled is false")
    if restart_count >= policy.max_requeues:
        return RequeueDecision(False, denied,
                               f"restart {restart_count} reached cluster.requeue.max_requeues={policy.max_requeues}")
    what = cause or ("failure" if transient else "stopped")
    if transient:
        cap = policy.max_failure_requeues
        used = requeues_used(attempts, job_id, where=is_failure)
        if used >= cap and used:
            return RequeueDecision(False, denied, f"{used} failure requeue(s) of job {job_id} already reached "
                                                  f"cluster.requeue.max_failure_requeues={cap}")
        if used >= cap:
            return RequeueDecision(False, denied, f"cluster.requeue.max_failure_requeues={cap}: no requeue after "
                                                  f"{what} (a failure that may be transient)")
        return RequeueDecision(True, "requeue", f"{what}: retry {used + 1} of at most {cap} "
                                                f"(cluster.requeue.max_failure_requeues)")
    if cause == "timeout":
        cap = policy.max_timeout_requeues if policy.max_timeout_requeues is not None else policy.max_requeues
        used = requeues_used(attempts, job_id, cause="timeout")
        if used >= cap:
            return RequeueDecision(False, "requeue-denied",
                                   f"{used} time-limit requeue(s) of job {job_id} already reached "
                                   f"cluster.requeue.max_timeout_requeues={cap}")
    return RequeueDecision(True, "requeue", f"{what}: restart {restart_count + 1} of at most {policy.max_requeues}")


@dataclass
class AttemptVerdict:
    """Node 0's conclusion of an attempt (`decide_attempt`): its attempts.jsonl record, and what follows."""

    record: AttemptRecord
    requeue: bool  # the policy allows a requeue (Slurm: `scontrol requeue`; locally the supervisor restarts)
    why: str  # the requeue policy's reason, for the log
    exit_code: int  # every node's exit status for the attempt (a node that failed itself keeps its own)

    @property
    def cause(self) -> Optional[str]:
        return self.record["cause"]

    @property
    def action(self) -> str:
        return self.record["action"]

    def requeue_failed(self, detail: str) -> "AttemptVerdict":
        """The verdict once `scontrol requeue` failed: action requeue-failed, and its exit code."""
        record = self.record.copy()
        record["action"] = "requeue-failed"
        record["message"] = f"{self.record['message']}; scontrol requeue failed: {detail}"
        return AttemptVerdict(record, self.requeue, self.why, exit_code_for(record["reason"], "requeue-failed"))


def decide_attempt(total: NodeOutcome, policy: RequeuePolicy, *, job_id: str, restart: int, on_slurm: bool,
                   attempts: Iterable[AttemptRecord] = (), cancelled: bool = False,
                   remaining_s: Optional[float] = None, preempted: Optional[bool] = None,
                   margin_s: float = TIMEOUT_MARGIN_S, spec_path: str = "spec.yaml", node: str = "",
                   nodes: int = 1, started: float = 0.0, ended: float = 0.0,
                   launcher_rc: Optional[int] = None) -> AttemptVerdict:
    """Conclude an attempt: its cause, whether `policy` (cluster.requeue) lets it be requeued, the exit code.

    `total`: every node's outcome combined (`combine_nodes`); `attempts`: the run's earlier records (the
    caps count their requeues); `cancelled`: `python -m ernie_cluster cancel` asked to cancel this job (no
    requeue then); `remaining_s`, `preempted`: the time left in the allocation and Slurm's preemption state
    when the stop signal came. The rest is copied into the record."""
    cause = attempt_cause(total, on_slurm=on_slurm, cancelled=cancelled, remaining_s=remaining_s,
                          preempted=preempted, signal_lead_s=policy.signal_lead_s, margin_s=margin_s)
    decision = decide_requeue(total.reason, cause, restart, policy, attempts, job_id, retryable=total.retryable)
    if cancelled and (decision.requeue or cause == "cancelled"):
        decision = RequeueDecision(False, "none", "cancelled by `python -m ernie_cluster cancel`")
    record = AttemptRecord(
        job_id=job_id, restart=restart, node=node, nodes=nodes,
        reason=total.reason, cause=cause, ranks=total.ranks, step=total.step,
        signal=total.signal, started=started, ended=ended,
        exit_code=launcher_rc, action=decision.action,
        message=_attempt_message(total, decision, cancelled, spec_path),
        remaining_s=None if remaining_s is None else round(remaining_s, 1),
        backend="slurm" if on_slurm else "local",
        failed_nodes=[], excluded={}, not_excluded={}, reconciled=None,
    )
    return AttemptVerdict(record, decision.requeue, decision.why, exit_code_for(total.reason, decision.action))


def _attempt_message(total: NodeOutcome, decision: RequeueDecision, cancelled: bool, spec_path: str) -> str:
    """What happened, the requeue policy's word on it, and how to go on when nothing else will."""
    message = total.message
    if decision.why:
        message = f"{message}; {decision.why}"
    if not decision.requeue and (decision.action == "requeue-denied"
                                 or (total.reason == "failed" and decision.why and not cancelled)):
        saved = f"its checkpoint (step {total.step})" if total.reason == "stopped" and total.step is not None \
            else "the last checkpoint"
        message = f"{message}; continue from {saved} with `python -m ernie_cluster submit {spec_path} --resume`"
    return message


def cause_counts(attempts: Iterable[AttemptRecord]) -> Dict[str, Dict[str, int]]:
    """Per cause (the reason for a completed attempt): how many attempts ended so, how many were requeued."""
    counts: Dict[str, Dict[str, int]] = {}
    for a in attempts:
        entry = counts.setdefault(str(a.get("cause") or a.get("reason") or "unknown"), {"attempts": 0, "requeued": 0})
        entry["attempts"] += 1
        entry["requeued"] += a.get("action") in ("requeue", "requeue-failed")
    return counts


def exit_code_for(reason: str, action: str) -> int:
    """A launcher's exit status for an attempt that ended with `reason` and requeue `action`."""
    if reason == "completed":
        return EXIT_OK
    if reason == "stopped":
        return EXIT_REQUEUE_DENIED if action == "requeue-denied" else EXIT_STOPPED
    return EXIT_STOPPED if action == "requeue" else EXIT_FAILED  # a failure being retried
