"""Node 0's conclusion of an attempt (`NodeLauncher._conclude`): combine every node's outcome, name the nodes at
fault, decide (`attempt.decide_attempt`), record the verdict in RUN/attempts.jsonl, publish it for the other
nodes, then act on Slurm: `scontrol requeue` when the policy allows it, leaving the nodes at fault out of the
requeued job (`slurm_actions`), or `scancel` after `cancel`.

The record is written before the requeue: the requeue TERMs the job's processes, and srun kills its tasks.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from ..rundir import NodeFailure
from . import attempt as att
from . import node_faults as nf
from . import preflight as pf
from . import slurm_actions
from .cluster_env import ClusterEnvironment
from .exchange import NODE_RESULT, collect_peers, write_decision
from .results import LaunchResult

if TYPE_CHECKING:  # pragma: no cover
    from .node import NodeLauncher, _Attempt


def conclude(launcher: "NodeLauncher", a: "_Attempt", outcome: att.NodeOutcome, rc: Optional[int]) -> LaunchResult:
    """Node 0: combine every node's outcome, decide, then record and act on the verdict; node 0's result."""
    run, cenv = a.run, a.cenv
    outcomes = {0: outcome}
    if cenv.num_nodes > 1:
        outcomes.update(collect_peers(run, cenv, a.spec, launcher.peer_wait_s, launcher._log))
    total, faults, failed_nodes = nodes_at_fault(launcher, a, outcomes)
    cancelled = run.cancel_requested(cenv.job_id)
    remaining, preempted = _stop_timing(launcher, total, cenv, cancelled)
    verdict = att.decide_attempt(
        total, a.spec.cluster.requeue, job_id=cenv.job_id, restart=cenv.restart_count, on_slurm=cenv.is_slurm,
        attempts=run.read_attempts(), cancelled=cancelled, remaining_s=remaining, preempted=preempted,
        margin_s=launcher.timeout_margin_s, spec_path=str(run.spec), node=cenv.node_name, nodes=cenv.num_nodes,
        started=a.started, ended=time.time(), launcher_rc=rc)
    verdict.record["failed_nodes"] = failed_nodes
    _log_verdict(launcher, verdict, total, cenv.is_slurm, remaining)
    verdict = _carry_out(launcher, a, verdict, faults)
    cause, action = verdict.cause, verdict.action
    launcher._log(f"attempt {cenv.attempt}: {total.reason}{' (' + cause + ')' if cause else ''}, step {total.step}, "
                  f"action {action}, exit code {verdict.exit_code}")
    return launcher._result(cenv, total.reason, verdict.exit_code, verdict.record["message"], step=total.step,
                            cause=cause, action=action, signal=verdict.record["signal"], log_dir=str(a.node_dir))


def nodes_at_fault(launcher: "NodeLauncher", a: "_Attempt", outcomes: Dict[int, att.NodeOutcome]
                   ) -> Tuple[att.NodeOutcome, Dict[str, str], List[NodeFailure]]:
    """Every node's outcome combined, the nodes at fault (host -> why: `node_faults.nodes_at_fault`) and the
    nodes that died. A node that reported nothing and that Slurm says is not responding died (node-failed);
    a failed pre-flight is judged across every node's report (`preflight.judge_nodes`): one that failed
    everywhere is the environment's, no node's, and not retried."""
    cenv, attempt_dir = a.cenv, a.node_dir.parent
    silent = [k for k in outcomes if k and not (attempt_dir / f"node{k}" / NODE_RESULT).exists()]
    dead = slurm_actions.silent_dead(cenv, silent) if cenv.is_slurm and silent else {}
    for k, why in dead.items():
        launcher._log(f"node {k}: {why}")
        outcomes[k] = att.NodeOutcome("failed", None, why, retryable=True, cause="node-failed")
    total = att.combine_nodes(outcomes)
    named = {cenv.node_list[k]: f"node-failed: {why}" for k, why in dead.items()}
    if total.cause == "preflight-failed":
        reports = list(pf.read_reports(attempt_dir, cenv.num_nodes).values())
        judged = pf.judge_nodes(reports)
        named = {h: why for h, why in pf.failure_summaries(reports).items() if h in judged.exclude}
        total.retryable = total.retryable and judged.retryable
        if judged.everywhere:
            launcher._log(f"pre-flight checks {', '.join(judged.everywhere)} failed on every node: not a node's "
                          f"fault, so no node is excluded and the attempt is not retried")
    faults = nf.nodes_at_fault(total, outcomes, cenv.node_list,
                               trainers_per_node=a.spec.resources.trainers_per_node, named=named)
    failed = [NodeFailure(node=cenv.node_list[k], at=time.time(), why=why) for k, why in sorted(dead.items())]
    return total, faults, failed


def _stop_timing(launcher: "NodeLauncher", total: att.NodeOutcome, cenv: ClusterEnvironment,
                 cancelled: bool) -> Tuple[Optional[float], Optional[bool]]:
    """(time left in the allocation, being preempted) when the stop signal came, as seen then; for a stop
    whose cause the outside signal decides on Slurm, asked now what was not known then."""
    remaining, preempted = launcher._remaining_at_signal, launcher._preempted_at_signal
    if total.reason != "stopped" or total.cause is not None or cancelled or not cenv.is_slurm:
        return remaining, preempted
    if remaining is None:
        when = launcher._signals[0][1] if launcher._signals else (total.stopped_at or time.time())
        end = cenv.refresh_end_time()
        remaining = None if end is None else end - when
    if preempted is None:
        preempted = cenv.query_preempted()
    return remaining, preempted


def _log_verdict(launcher: "NodeLauncher", verdict: att.AttemptVerdict, total: att.NodeOutcome, on_slurm: bool,
                 remaining: Optional[float]) -> None:
    cause = verdict.cause
    if total.reason == "stopped":
        left = "" if not on_slurm or cause == "launcher-died" else \
            f"; time left at the signal: {'unknown' if remaining is None else f'{remaining:.0f}s'}"
        launcher._log(f"attempt stopped ({cause}{left}): {verdict.action} - {verdict.why}")
    elif total.reason == "failed" and verdict.why:
        launcher._log(f"attempt failed ({cause}, {'may be transient' if total.retryable else 'not retried'}): "
                      f"{verdict.action} - {verdict.why}")


def _plan_exclusion(a: "_Attempt", verdict: att.AttemptVerdict, faults: Dict[str, str]) -> Optional[nf.ExclusionPlan]:
    """Fill the record's `excluded` / `not_excluded` (Slurm only: locally there is one machine); the plan to
    carry out with the requeue, or None."""
    plan = None
    if not a.cenv.is_slurm:
        not_excluded: Dict[str, str] = {}
    elif verdict.requeue:
        plan = slurm_actions.plan(a.cenv, a.spec, faults)
        not_excluded = dict(plan.skipped)
    else:
        not_excluded = {host: f"the attempt is not requeued; {why}" for host, why in faults.items()}
    verdict.record["excluded"] = dict(plan.added) if plan is not None else {}
    verdict.record["not_excluded"] = not_excluded
    return plan


def _carry_out(launcher: "NodeLauncher", a: "_Attempt", verdict: att.AttemptVerdict,
               faults: Dict[str, str]) -> att.AttemptVerdict:
    """Record and publish the verdict, then act on Slurm. Returns the verdict as recorded last."""
    cenv = a.cenv
    plan = _plan_exclusion(a, verdict, faults)
    _publish(a, verdict)
    if verdict.requeue and cenv.is_slurm:
        ok, detail, unexcluded = slurm_actions.requeue(cenv, plan, launcher._log)
        if ok:
            launcher._log(f"requeued job {cenv.job_id} (scontrol requeue)")
            if unexcluded and plan is not None:
                launcher._log(f"WARNING: {unexcluded}")
                verdict.record["not_excluded"].update({h: unexcluded for h in plan.added})
                verdict.record["excluded"] = {}
                _publish(a, verdict)
        else:
            verdict = verdict.requeue_failed(detail)
            _publish(a, verdict)  # replaces the record above (read_attempts keeps the last per attempt)
            launcher._log(f"scontrol requeue {cenv.job_id} failed ({detail}); if Slurm is requeuing the job "
                          f"itself (preemption with PreemptMode=REQUEUE) this is expected")
    if verdict.cause == "cancelled" and cenv.is_slurm:  # end the job as CANCELLED, not as a failed exit status
        ok, detail = launcher._slurm_command(cenv, "scancel", cenv.job_id)
        launcher._log(f"scancel {cenv.job_id}: {'done' if ok else detail}")
    return verdict


def _publish(a: "_Attempt", verdict: att.AttemptVerdict) -> None:
    # Before `scontrol requeue`: the requeue SIGTERMs this job's processes, srun kills its tasks.
    a.run.record_attempt(verdict.record)
    write_decision(a.node_dir.parent, dict(verdict.record, exit_code_node=verdict.exit_code))
