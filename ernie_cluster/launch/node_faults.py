"""Bad nodes, as pure decisions: which nodes an attempt's failure is attributed to, which of them the requeued
job leaves out, and the record of an attempt Slurm ended because one of its nodes died. The node launcher asks
Slurm (`slurm_actions`) and passes the answers in.

- `nodes_at_fault`: host -> why, from the attempt's combined outcome (`attempt.combine_nodes` names the node
  ranks at fault) or from a verdict made elsewhere (`preflight.judge_nodes`, Slurm's "not responding")
- `plan_exclusion`: the job's new ExcNodeList (`scontrol update` replaces the list, so the current one is kept),
  under two caps: `cluster.requeue.max_excluded_nodes`, and never so many that the partition keeps fewer usable
  nodes than the job needs (a run must not exclude itself out of the cluster)
- `lost_attempt_record`: the attempts.jsonl record of an attempt whose launchers Slurm killed: a dead node
  (NODE_FAIL: Slurm requeues the job itself, and the next attempt writes the record, with the dead node and
  when), or any other end that left no record
- `node_events`: what `status` lists: the nodes that died, were excluded, or were not (and why)

Standard library only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from ..rundir import AttemptRecord, NodeFailure
from ..slurm import NodeState, parse_timestamp
from .attempt import NodeOutcome
from .cluster_env import HostlistError, expand_hostlist

# Failures that may be a node's: a dead node, a failed pre-flight, a hang, a trainer crashed or killed, a dead
# paddle launcher. Never a non-finite loss, a setup or data error (the user's), or a node that only followed.
NODE_FAULT_CAUSES = ("node-failed", "preflight-failed", "hung", "crashed", "trainer-died", "launcher-died")
_NAMED_CAUSES = ("node-failed", "preflight-failed")  # their nodes are named by Slurm / judge_nodes, not by ranks
_WHY_CHARS = 240  # a reason is for people: long enough for an exception's first line


def _short(text: str, limit: int = _WHY_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def nodes_at_fault(total: NodeOutcome, outcomes: Mapping[int, NodeOutcome], node_list: Sequence[str], *,
                   trainers_per_node: int = 1, named: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """host -> why, for a failure a new attempt on other nodes may not repeat; {} when none is a node's.

    `total`: the combined outcome (its cause and `nodes`, the node ranks whose trainers failed first); `outcomes`:
    every node's, for the message; `named`: host -> why for the causes whose nodes come from elsewhere (a failed
    pre-flight: `judge_nodes`; a dead node: Slurm). A hang or crash on every node of a multi-node attempt is
    nobody's node: nothing then. A hang's ranks (the watchdog's suspects) narrow it to their nodes."""
    cause = total.cause
    if cause not in NODE_FAULT_CAUSES:
        return {}
    if cause in _NAMED_CAUSES:
        return {host: _short(why) for host, why in (named or {}).items()}
    ranks_nodes = {r // max(1, trainers_per_node) for r in total.ranks}
    blamed = set(total.nodes)
    if ranks_nodes and blamed and ranks_nodes < blamed:
        blamed = ranks_nodes
    blamed = {k for k in blamed if 0 <= k < len(node_list)}
    if not blamed or (len(node_list) > 1 and len(blamed) >= len(node_list)):
        return {}
    faults: Dict[str, str] = {}
    for k in sorted(blamed):
        ranks = sorted(r for r in total.ranks if r // max(1, trainers_per_node) == k)
        what = f"{cause} on node {k}" + (f" (ranks {ranks})" if ranks else "")
        message = outcomes[k].message if k in outcomes else ""
        faults[node_list[k]] = _short(f"{what}: {message}" if message else what)
    return faults


@dataclass(frozen=True)
class ExclusionPlan:
    """What `plan_exclusion` decided: the job's whole ExcNodeList to set, and each node at fault's fate."""

    exclude_list: List[str]  # current ExcNodeList + added, sorted: what `scontrol update` sets
    added: Dict[str, str]  # host -> why it is left out of the requeued job
    skipped: Dict[str, str]  # host -> why it is not (a cap)

    @property
    def changed(self) -> bool:
        return bool(self.added)


def plan_exclusion(faults: Mapping[str, str], *, current: Sequence[str], job_nodes: int,
                   usable: Optional[Sequence[str]], max_excluded: int, user_excluded: Iterable[str] = (),
                   required: Iterable[str] = ()) -> ExclusionPlan:
    """Add the nodes at fault (`faults`, in order) to the job's ExcNodeList `current` while both caps hold:
    at most `max_excluded` nodes excluded by ernie_cluster (the list less the user's own `--exclude`), and at
    least `job_nodes` of the partition's `usable` nodes (None: Slurm did not say, so nothing is added) left
    outside the list. A node already in the list is neither added nor skipped; a node the job asks for by name
    (`required`: its --nodelist) is never excluded (the job could never start again)."""
    have = set(current)
    ours = have - set(user_excluded)
    needed = set(required)
    added: Dict[str, str] = {}
    skipped: Dict[str, str] = {}
    for host, why in faults.items():
        if host in have or host in added:
            continue
        if host in needed:
            skipped[host] = "the job asks for it by name (--nodelist): excluding it would keep the job from starting"
        elif max_excluded <= 0:
            skipped[host] = "cluster.requeue.max_excluded_nodes is 0"
        elif len(ours) + len(added) >= max_excluded:
            already = ", ".join(sorted(ours | set(added)))
            skipped[host] = f"cluster.requeue.max_excluded_nodes={max_excluded} reached (excluded: {already})"
        elif usable is None:
            skipped[host] = "Slurm did not say which nodes of the partition are usable (sinfo)"
        else:
            left = [n for n in usable if n not in have and n not in added and n != host]
            if len(left) < job_nodes:
                skipped[host] = (f"excluding it would leave {len(left)} usable node(s) in the partition for a "
                                 f"{job_nodes}-node job")
            else:
                added[host] = why
    return ExclusionPlan(sorted(have | set(added)), added, skipped)


def expand_nodes(text: Optional[str]) -> List[str]:
    """A Slurm node list as scontrol or sacct print it (`n[1-3]`, `(null)`, `None assigned`, ``) as names."""
    text = (text or "").strip()
    if not text or text in ("(null)", "None") or text.startswith("None "):
        return []
    try:
        return expand_hostlist(text)
    except HostlistError:
        return [text]


def dead_nodes(hosts: Sequence[str], states: Mapping[str, NodeState], *, fallback_at: Optional[float]
               ) -> List[NodeFailure]:
    """The nodes of `hosts` Slurm says are not responding or down, with since when (its reason's time, else
    `fallback_at`) and why."""
    failed: List[NodeFailure] = []
    for host in hosts:
        st = states.get(host)
        if st is None:
            continue
        if st.responding and "down" not in st.state and "not responding" not in st.reason.lower():
            continue
        failed.append(NodeFailure(node=host, at=st.since if st.since is not None else fallback_at,
                                  why=st.reason or f"state {st.state}"))
    return failed


def _when(at: Optional[float]) -> str:
    return "at an unknown time" if at is None else f"at {time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(at))}"


def lost_attempt_record(old: Optional[AttemptRecord], row: Mapping[str, str], states: Mapping[str, NodeState], *,
                        job_id: str, restart: int, by: str,
                        checkpoint_step: Optional[int] = None) -> Optional[AttemptRecord]:
    """The record of attempt `restart` of `job_id` from what Slurm says of it (`row`: its sacct line; `states`:
    sinfo on its nodes), written by attempt `by`; None when `old` (its record, if any) needs no change.

    NODE_FAIL: cause node-failed with the dead nodes and when (replacing whatever node 0 wrote before Slurm
    killed it, which is kept in the message). Any other end without a record: reason `lost`, the cause only
    where Slurm's state names it (PREEMPTED, TIMEOUT)."""
    state = (row.get("state") or "").split()[0] if row.get("state") else ""
    hosts = expand_nodes(row.get("nodes"))
    ended = parse_timestamp(row.get("end"))
    resume = "the last complete checkpoint" + (f" (step {checkpoint_step})" if checkpoint_step is not None else "")
    if state == "NODE_FAIL":
        if old is not None and old.get("cause") == "node-failed" and old.get("failed_nodes"):
            return None
        failed = dead_nodes(hosts, states, fallback_at=ended)
        who = "; ".join(f"{f['node']} ({f['why']}, {_when(f.get('at'))})" for f in failed) or \
            f"a node of {row.get('nodes')} (Slurm no longer marks any of them down)"
        message = (f"node failure: {who}; Slurm ended the attempt as NODE_FAIL and requeued the job itself; "
                   f"training resumes from {resume}")
        if old is not None:
            before = old.get("cause") or old.get("reason")
            message += f"; node 0 had recorded {before}: {_short(old.get('message', ''))}"
        return _record(old, job_id, restart, hosts, row, reason="failed", cause="node-failed", message=message,
                       failed=failed, by=f"written by attempt {by} from Slurm (sacct: NODE_FAIL; sinfo)")
    if old is not None or not state or state in ("RUNNING", "PENDING", "COMPLETED"):
        return None
    cause = {"PREEMPTED": "preempted", "TIMEOUT": "timeout"}.get(state)
    message = (f"the attempt left no record (its launchers were killed before they wrote one); Slurm ended it "
               f"as {state}; training resumes from {resume}")
    return _record(None, job_id, restart, hosts, row, reason="lost", cause=cause, message=message, failed=[],
                   by=f"written by attempt {by} from Slurm (sacct: {state})")


def _record(old: Optional[AttemptRecord], job_id: str, restart: int, hosts: List[str], row: Mapping[str, str], *,
            reason: str, cause: Optional[str], message: str, failed: List[NodeFailure], by: str) -> AttemptRecord:
    base: Dict[str, Any] = dict(old or {})
    return AttemptRecord(
        job_id=str(job_id), restart=restart, node=base.get("node") or (hosts[0] if hosts else ""),
        nodes=base.get("nodes") or len(hosts), reason=reason, cause=cause, ranks=[], step=base.get("step"),
        signal=None, started=base.get("started") or parse_timestamp(row.get("start")) or 0.0,
        ended=parse_timestamp(row.get("end")) or base.get("ended") or 0.0, exit_code=base.get("exit_code"),
        action="requeue", message=message, remaining_s=None, backend="slurm", failed_nodes=failed,
        excluded={}, not_excluded={f["node"]: "down; Slurm requeued the job itself (nothing to exclude)"
                                   for f in failed},
        reconciled=by)


def node_events(attempts: Iterable[Mapping[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """For `status`: the nodes that died ("failed": node, at, why, attempt), the nodes left out of a requeued job
    ("excluded": node, why, attempt) and those that were not though at fault ("not_excluded")."""
    events: Dict[str, List[Dict[str, Any]]] = {"failed": [], "excluded": [], "not_excluded": []}
    for a in attempts:
        attempt = f"{a.get('job_id')}-{a.get('restart')}"
        for f in a.get("failed_nodes") or []:
            if isinstance(f, Mapping):
                events["failed"].append({"node": f.get("node"), "at": f.get("at"), "why": f.get("why"),
                                         "attempt": attempt})
        for key in ("excluded", "not_excluded"):
            value = a.get(key)
            for node, why in (value.items() if isinstance(value, Mapping) else ()):
                events[key].append({"node": node, "why": why, "attempt": attempt})
    return events
