"""Node 0's dealings with Slurm about the job and its nodes, every call through `ernie_cluster.slurm` (its
timeouts); the decisions are `node_faults`'s.

- `requeue`: `scontrol requeue`, then the nodes at fault left out of the requeued job. Slurm refuses to change a
  running job's ExcNodeList ("Job is no longer pending execution"), so the update is retried every 0.3 s right
  after the requeue, while the job waits to start again (node 0's launcher outlives the requeue's TERM by
  KillWait), and it merges with the job's current list, since an update replaces it.
- `plan`: which nodes to exclude (`node_faults.plan_exclusion`), from `scontrol show job` (ExcNodeList,
  Partition, NumNodes) and `sinfo` (the partition's usable nodes).
- `silent_dead`: of the nodes that reported no result, the ones Slurm says are not responding or down.
- `reconcile_previous`: a requeued attempt's node 0 asks sacct how the previous attempt ended and writes or
  corrects its record when Slurm ended it (a dead node: NODE_FAIL, requeued by Slurm itself, its launchers
  killed before they could record anything true).
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import slurm
from ..rundir import AttemptRecord, RunDir
from ..spec import JobSpec
from . import node_faults as nf
from .cluster_env import ClusterEnvironment
from .exchange import ignore_all_stop_signals

UPDATE_RETRY_S = 0.3
UPDATE_WINDOW_S = 8.0  # under the smallest KillWait we expect (10 s on the test cluster, 30 s by default)
_FINISHED_WAIT_S = 10.0  # sacct may lag the requeue that started this attempt by a moment


def user_excluded(spec: JobSpec) -> List[str]:
    """Nodes the user's own `cluster.extra_sbatch` excludes (`exclude` / `x`): never counted against the cap."""
    extra = spec.cluster.extra_sbatch
    return nf.expand_nodes(extra.get("exclude") or extra.get("x"))


def plan(cenv: ClusterEnvironment, spec: JobSpec, faults: Mapping[str, str]) -> nf.ExclusionPlan:
    """Which of `faults` the requeued job leaves out, asked of Slurm now (before the requeue: the record says it)."""
    if not faults:
        return nf.ExclusionPlan([], {}, {})
    info = slurm.job_fields(cenv.job_id, env=cenv.env)
    if info is None:
        return nf.ExclusionPlan([], {}, {h: "scontrol show job did not answer" for h in faults})
    try:
        job_nodes = int(info.get("NumNodes", "").split("-")[0])
    except ValueError:
        job_nodes = cenv.num_nodes
    states = slurm.node_states(partition=info.get("Partition") or None, env=cenv.env)
    usable = None if isinstance(states, slurm.NoAnswer) else [n for n, st in states.items() if st.usable]
    return nf.plan_exclusion(faults, current=nf.expand_nodes(info.get("ExcNodeList")), job_nodes=job_nodes,
                             usable=usable, max_excluded=spec.cluster.requeue.max_excluded_nodes,
                             user_excluded=user_excluded(spec), required=nf.expand_nodes(info.get("ReqNodeList")))


def requeue(cenv: ClusterEnvironment, exclusion: Optional[nf.ExclusionPlan], log: Callable[[str], None],
            window_s: float = UPDATE_WINDOW_S) -> Tuple[bool, str, str]:
    """`scontrol requeue`, then the new ExcNodeList: (requeued, why not, the exclusion's failure or "")."""
    out = slurm.call(["scontrol", "requeue", cenv.job_id], timeout="action", env=cenv.env,
                     preexec_fn=ignore_all_stop_signals)
    if not out.ok:
        return False, out.error, ""
    if exclusion is None or not exclusion.changed:
        return True, "", ""
    value = ",".join(exclusion.exclude_list)
    deadline = time.monotonic() + window_s
    tries = 0
    while True:
        tries += 1
        update = slurm.update_job(cenv.job_id, env=cenv.env, timeout="node", preexec_fn=ignore_all_stop_signals,
                                  ExcNodeList=value)
        if update.ok:
            log(f"job {cenv.job_id} will not run on {', '.join(sorted(exclusion.added))} (ExcNodeList={value}, "
                f"set after {tries} tr{'y' if tries == 1 else 'ies'})")
            return True, "", ""
        if time.monotonic() >= deadline or not update.answered:
            return True, "", f"scontrol update ExcNodeList={value} failed after {tries} tries: {update.error}"
        time.sleep(UPDATE_RETRY_S)


def silent_dead(cenv: ClusterEnvironment, silent: Sequence[int]) -> Dict[int, str]:
    """node rank -> why, for the silent nodes Slurm marks not responding or down."""
    hosts = [cenv.node_list[k] for k in silent if 0 <= k < cenv.num_nodes]
    if not hosts:
        return {}
    states = slurm.node_states(nodes=hosts, env=cenv.env)
    if isinstance(states, slurm.NoAnswer):
        return {}
    dead = {f["node"]: f for f in nf.dead_nodes(hosts, states, fallback_at=time.time())}
    return {k: f"{cenv.node_list[k]} is not responding ({dead[cenv.node_list[k]]['why']}, Slurm)"
            for k in silent if 0 <= k < cenv.num_nodes and cenv.node_list[k] in dead}


def _previous_row(rows: List[Dict[str, str]]) -> Optional[Dict[str, str]]:
    """sacct's line for the attempt before the running one (the last line, this attempt), once sacct has both:
    the line before the last, when it has ended. None while sacct still shows the previous attempt running."""
    if len(rows) < 2 or _state(rows[-1]) != "RUNNING" or _state(rows[-2]) in ("RUNNING", "PENDING", ""):
        return None
    return rows[-2]


def _state(row: Mapping[str, str]) -> str:
    words = (row.get("state") or "").split()
    return words[0] if words else ""


def reconcile_previous(run: RunDir, cenv: ClusterEnvironment, log: Callable[[str], None],
                       wait_s: float = _FINISHED_WAIT_S) -> Optional[AttemptRecord]:
    """Node 0 of a requeued Slurm attempt: write or correct the previous attempt's record from what Slurm says
    of it (`node_faults.lost_attempt_record`); the record written, or None."""
    if not cenv.is_slurm or cenv.node_rank != 0 or cenv.restart_count < 1:
        return None
    prev = cenv.restart_count - 1
    old = next((a for a in run.read_attempts()
                if str(a.get("job_id")) == str(cenv.job_id) and a.get("restart") == prev), None)
    deadline = time.monotonic() + wait_s
    while True:
        rows = slurm.job_attempts(cenv.job_id, env=cenv.env, timeout="node")
        row = _previous_row(rows)
        if row is not None or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    if row is None:
        if old is None:
            log(f"attempt {cenv.job_id}-{prev} left no record and sacct does not list it; nothing to reconcile")
        return None
    if len(rows) != cenv.restart_count + 1 and _state(row) != "NODE_FAIL":
        # one sacct line per start: a requeue while pending (no start) would pair the line with another attempt
        log(f"sacct lists {len(rows)} starts of job {cenv.job_id} for restart {cenv.restart_count}; the previous "
            f"attempt's record is left as it is")
        return None
    hosts = nf.expand_nodes(row.get("nodes"))
    states = slurm.node_states(nodes=hosts, env=cenv.env) if hosts else {}
    record = nf.lost_attempt_record(old, row, {} if isinstance(states, slurm.NoAnswer) else states,
                                    job_id=cenv.job_id, restart=prev, by=cenv.attempt,
                                    checkpoint_step=_checkpoint_step(run))
    if record is not None:
        run.record_attempt(record)
        log(f"attempt {cenv.job_id}-{prev} recorded from Slurm ({row.get('state')}): {record['message']}")
    return record


def _checkpoint_step(run: RunDir) -> Optional[int]:
    from ..runs import last_checkpoint  # standard library only

    found = last_checkpoint(run)
    step = found.get("step") if found else None
    return step if isinstance(step, int) else None
