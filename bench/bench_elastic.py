"""Elastic requeue on the real local Slurm: the time from a preemption to training resumed when only part of the
nodes is free, for a run with a node range (it comes back on the nodes that are free) and the same run with a fixed
node count (it waits until its nodes are free again), side by side in one run.

Both variants are the tiny ERNIE of jobs/ernie_tiny_slurm.yaml in the preemptable partition `low` on whole nodes
(cluster.exclusive), micro batch 2 and global batch 12 (kept at 2 and at 3 nodes), ERNIE_CLUSTER_LOSS_LOG set (rank
0 appends one JSON line per step), started on all three nodes of the idle cluster; they differ only in:

    elastic   resources.nodes: 2-3
    fixed     resources.nodes: 3

Once a job's loss log reaches TRIGGER_STEP, a high-priority job takes the job's last node for itself for HOLD_S
seconds (`sbatch -p high -w n3 --exclusive --wrap 'sleep HOLD_S'`); its submission is T0. It preempts the job (the
trainers save at the next step boundary, the job is requeued); Slurm restarts the elastic job on the two free nodes,
the fixed one only once the node is free again. The figures, each from T0:

    resumed     -> the first step beyond the stop step in the loss log (polled every POLL_S s, stamped when seen)
    steps held  the steps trained while the node was held (loss lines seen between the holder's start and end in
                sacct): what the elastic run gains; the fixed run trains none
    components  -> attempt ended (attempts.jsonl), -> node held (the holder's start), -> job running again (first
                line of the next attempt's launcher.log, 1 s stamps) and on how many nodes, -> the node free again

The fixed run's figure is the hold time plus a requeue and a start-up: it grows with the hold (on a shared cluster a
node taken by another job may stay taken for hours); the elastic run's does not. The hold time is in every row.

One job at a time (elastic, then fixed), each on an idle cluster; each job and its holder are cancelled once their
figures are in, and every job submitted here is scancelled in a finally block (also when the harness stops the
module with SIGTERM). --quick: one pair, HOLD_S 60 s (about 4 minutes); full: REPEATS_FULL pairs, HOLD_S 90 s.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ernie_cluster import slurm
from ernie_cluster.rundir import AttemptRecord, RunDir

from bench.common import REPO, load_avg, make_row, module_main, slurm_answered, summarize
from bench.slurm_jobs import (TERMINAL, LossTail, check_alive, first_stamp, job_state, on_sigterm,
                              preemptible_cluster, scancel_and_wait, wait_for_idle_cluster)

PY = sys.executable
TINY = REPO / "jobs" / "ernie_tiny_slurm.yaml"
PARTITION = "low"
VARIANTS = (("elastic", "2-3"), ("fixed", "3"))
MICRO, GBS = 2, 12             # 12 = 2 x dp 3 x 2 = 2 x dp 2 x 3: the same global batch on 3 and on 2 nodes
TRIGGER_STEP = 10              # hold a node once training is past its start-up
MAX_STEPS = 5000               # never reached: each job is cancelled once its figures are in
HOLD_S = {True: 60, False: 90}  # by quick: how long the other job holds the node
REPEATS_FULL = 2
POLL_S = 0.2


def _overrides(nodes: str, run: Path, name: str) -> List[str]:
    return [f"output_dir={run}", f"name={name}", f"cluster.partition={PARTITION}", "cluster.exclusive=true",
            f"resources.nodes={nodes}", f"train.micro_batch_size={MICRO}", f"train.global_batch_size={GBS}",
            f"train.max_steps={MAX_STEPS}", f"train.checkpoint_steps={MAX_STEPS}", f"train.save_steps={MAX_STEPS}",
            "train.eval_iters=0", "convert.enabled=false"]


def _submit(variant: str, nodes: str, tmp: Path, idx: int, env: Dict[str, str]) -> Dict[str, Any]:
    name = f"be-{variant}-{idx}-{os.getpid()}"
    run, loss_log = tmp / name, tmp / f"{name}.loss.jsonl"
    out = subprocess.run([PY, "-m", "ernie_cluster", "submit", str(TINY), *_overrides(nodes, run, name)],
                         capture_output=True, text=True, cwd=str(REPO),
                         env={**env, "ERNIE_CLUSTER_LOSS_LOG": str(loss_log)}, timeout=120)
    ids = re.findall(r"^training job: (\d+)", out.stdout, re.M)
    if out.returncode != 0 or not ids:
        raise RuntimeError(f"ernie_cluster submit ({variant}) exited {out.returncode}: "
                           f"{(out.stderr or out.stdout).strip()[-800:]}")
    return {"variant": variant, "run": run, "loss_log": loss_log, "job": ids[0]}


def _idle_nodes(env: Dict[str, str]) -> Tuple[List[str], List[str]]:
    """(every node of the partition, the idle ones): a range job starts on whatever is idle."""
    every = slurm_answered(slurm.call(["sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N"], env=env)).stdout.split()
    idle = slurm_answered(slurm.call(["sinfo", "-h", "-N", "-p", PARTITION, "-t", "idle", "-o", "%N"],
                                     env=env)).stdout.split()
    return sorted(set(every)), sorted(set(idle))


def _wait_for_idle_nodes(env: Dict[str, str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (nodes := _idle_nodes(env))[0] != nodes[1]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"nodes of {PARTITION} still busy after {timeout:.0f} s: idle {nodes[1]} of {nodes[0]}")
        time.sleep(1)


def _node_list(job: Dict[str, Any], restart: int) -> List[str]:
    """The nodes of one attempt, as its node-0 launcher logged them."""
    found = first_stamp(RunDir(job["run"]).attempt_log_dir(job["job"], restart, 0) / "launcher.log",
                        r"node_list=(\S+)")
    return found[1].group(1).split(",") if found else []


def _poll_until(what: str, job: Dict[str, Any], tail: LossTail, env: Dict[str, str], timeout: float, check):
    """Poll the loss log until `check()` returns something; the job must stay alive meanwhile."""
    deadline, last_alive = time.monotonic() + timeout, 0.0
    while True:
        tail.poll()
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"{job['variant']} job {job['job']}: no {what} within {timeout:.0f} s (loss log at "
                               f"step {tail.last_step}, job {job_state(job['job'], env)})")
        if time.monotonic() - last_alive > 3:
            check_alive(job, env, what)
            last_alive = time.monotonic()
        time.sleep(POLL_S)


def _hold(node: str, seconds: int, env: Dict[str, str], submitted: List[str]) -> str:
    out = slurm_answered(slurm.sbatch(["-p", "high", "-w", node, "-N", "1", "--exclusive", "-J", "be-hold",
                                       "-o", "/dev/null", "--wrap", f"sleep {seconds}"], env=env))
    if out.returncode != 0:
        raise RuntimeError(f"sbatch of the job that holds {node} failed: {out.stderr.strip()}")
    submitted.append(slurm.parsable_job_id(out))
    return submitted[-1]


def _stopped_record(job: Dict[str, Any]) -> Optional[AttemptRecord]:
    record = next((a for a in RunDir(job["run"]).read_attempts() if str(a.get("restart")) == "0"), None)
    if record is not None and record.get("reason") != "stopped":
        raise RuntimeError(f"{job['variant']}: attempt {job['job']}-0 ended '{record.get('reason')}', not stopped "
                           f"by the preemption: {record.get('message')}")
    return record


def _held_span(holder: str, env: Dict[str, str]) -> Optional[Tuple[float, float]]:
    """(start, end) of the holder once it has ended, from sacct."""
    out = slurm_answered(slurm.sacct("State,Start,End", [holder], env=env)).stdout.strip().splitlines()
    state, start, end = (out[-1].split("|") + ["", "", ""])[:3] if out else ("", "", "")
    if (state.split() or [""])[0] not in TERMINAL:
        return None
    a, b = slurm.parse_timestamp(start), slurm.parse_timestamp(end)
    return (a, b) if a and b else None


def _trial(variant: str, nodes: str, hold_s: int, tmp: Path, idx: int, env: Dict[str, str],
           submitted: List[str]) -> Dict[str, Any]:
    _wait_for_idle_nodes(env)
    job = _submit(variant, nodes, tmp, idx, env)
    submitted.append(job["job"])
    tail = LossTail(job["loss_log"])
    holder = None
    try:
        _poll_until(f"step {TRIGGER_STEP}", job, tail, env, 240, lambda: tail.last_step >= TRIGGER_STEP)
        before = _node_list(job, 0)
        if len(before) != 3:
            raise RuntimeError(f"{variant}: the first attempt ran on {before}, not on all three nodes")
        t0 = time.time()
        holder = _hold(before[-1], hold_s, env, submitted)
        n_before = len(tail.lines)
        record = _poll_until("end of the first attempt", job, tail, env, 120, lambda: _stopped_record(job))
        stop = int(record["step"])
        first = _poll_until("resume", job, tail, env, hold_s + 240,
                            lambda: next((ln for ln in tail.lines[n_before:] if ln[0] > stop), None))
        # the elastic run trains on while the node is held: count its steps until the holder ends
        span = _poll_until("end of the hold", job, tail, env, hold_s + 120, lambda: _held_span(holder, env))
    finally:  # one job at a time: this one and its holder are gone before the next starts
        scancel_and_wait([job["job"], holder or ""], env)
    return _figures(job, tail, record, first, span, t0, hold_s, before)


def _figures(job: Dict[str, Any], tail: LossTail, record: AttemptRecord, first: Tuple[int, float],
             span: Tuple[float, float], t0: float, hold_s: int, before: List[str]) -> Dict[str, Any]:
    after = _node_list(job, 1)
    want = 2 if job["variant"] == "elastic" else 3
    if len(after) != want or (want == 2 and before[-1] in after):
        raise RuntimeError(f"{job['variant']}: the restarted attempt ran on {after}, expected {want} nodes"
                           f"{' without ' + before[-1] if want == 2 else ''}")
    restarted = first_stamp(RunDir(job["run"]).attempt_log_dir(job["job"], 1, 0) / "launcher.log", r".")
    held = [ln for ln in tail.lines if span[0] <= ln[1] <= span[1]]
    stop = int(record["step"])
    return {
        "variant": job["variant"], "job": job["job"], "hold_s": hold_s, "stop_step": stop,
        "first_step_after": first[0], "nodes_before": len(before), "nodes_after": len(after),
        "resume_s": first[1] - t0, "to_attempt_end_s": float(record["ended"]) - t0,
        "hold_start_s": span[0] - t0, "hold_end_s": span[1] - t0,
        "to_restart_s": (restarted[0] - t0) if restarted and restarted[0] else None,
        "steps_while_held": len(held), "sec_per_step_before": _sec_per_step([ln for ln in tail.lines if ln[0] <= stop]),
        "sec_per_step_after": _sec_per_step([ln for ln in tail.lines if ln[0] > stop]),
    }


def _sec_per_step(lines: List[Tuple[int, float]]) -> Optional[float]:
    """Seconds per step over these loss lines, from the fifth on (past the first steps' warm-up)."""
    warm = lines[5:]
    if len(warm) < 2:
        return None
    return (warm[-1][1] - warm[0][1]) / max(1, warm[-1][0] - warm[0][0])


def run(quick: bool) -> List[Dict[str, Any]]:
    env = preemptible_cluster()
    t_start, load_before = time.time(), load_avg()
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    submitted: List[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-elastic-"))
    trials: Dict[str, List[Dict[str, Any]]] = {v: [] for v, _ in VARIANTS}
    others: List[str] = []
    try:
        for i in range(1 if quick else REPEATS_FULL):
            for variant, nodes in VARIANTS:
                others += wait_for_idle_cluster(env, submitted, timeout=30 if quick else 600)
                trials[variant].append(_trial(variant, nodes, HOLD_S[quick], tmp, i, env, submitted))
    finally:
        left = scancel_and_wait(submitted, env)
        if left:
            print(f"bench_elastic: WARNING: jobs still queued after scancel: {' '.join(left)}", file=sys.stderr)
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(tmp, ignore_errors=True)
    machine = f"module {time.time() - t_start:.0f} s; load average before/after {load_before}/{load_avg()} on " \
              f"{os.cpu_count()} cores"
    if others:
        machine += f"; other jobs on the cluster: {', '.join(others)[:300]}"
    return _rows(trials, HOLD_S[quick], machine)


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.1f}"


def _ms(seconds: Optional[float]) -> str:
    return _fmt(seconds * 1000 if seconds is not None else None)


def _describe(t: Dict[str, Any]) -> str:
    return (f"{t['variant']} job {t['job']}: stopped at step {t['stop_step']}, attempt ended "
            f"{_fmt(t['to_attempt_end_s'])} s, node held {_fmt(t['hold_start_s'])}-{_fmt(t['hold_end_s'])} s, job "
            f"running again {_fmt(t['to_restart_s'])} s on {t['nodes_after']} nodes (was {t['nodes_before']}), "
            f"first step ({t['first_step_after']}) {_fmt(t['resume_s'])} s, {t['steps_while_held']} steps while held")


def _rows(trials: Dict[str, List[Dict[str, Any]]], hold_s: int, machine: str) -> List[Dict[str, Any]]:
    el, fx = trials["elastic"], trials["fixed"]
    res_e, res_f = summarize([t["resume_s"] for t in el]), summarize([t["resume_s"] for t in fx])
    held_e, held_f = summarize([t["steps_while_held"] for t in el]), summarize([t["steps_while_held"] for t in fx])
    baseline = f"fixed node count (nodes: 3), waits for the node held {hold_s} s, same run"
    raw = {v: [{k: (round(x, 3) if isinstance(x, float) else x) for k, x in t.items()} for t in ts]
           for v, ts in trials.items()}
    per = " | ".join(_describe(t) for t in el + fx)
    speed = "; ".join(f"job {t['job']}: {_ms(t['sec_per_step_before'])} ms per step on {t['nodes_before']} nodes, "
                      f"{_ms(t['sec_per_step_after'])} ms on {t['nodes_after']}" for t in el)
    setup = (f"tiny ERNIE on partition {PARTITION}, whole nodes, micro {MICRO} x global batch {GBS}; at step >= "
             f"{TRIGGER_STEP} a high-priority job holds the job's last node (n3) for {hold_s} s (sbatch -p high -w "
             f"n3 --exclusive). {machine}")
    return [
        make_row("elastic: seconds from preemption to training resumed, 1 of 3 nodes held", res_e["median"], "s",
                 baseline=baseline, baseline_value=res_f["median"], higher_is_better=False,
                 goal="resumes while the node is still held (< its release)",
                 goal_met=all(t["resume_s"] < t["hold_end_s"] for t in el), runs=res_e["runs"],
                 spread=res_e["spread"], baseline_runs=res_f["runs"], baseline_spread=res_f["spread"], hold_s=hold_s,
                 trials=raw,
                 note=f"T0 = submission of the job that takes the node -> first new step in the loss log. The fixed "
                      f"run's figure is the hold ({hold_s} s here) plus a requeue and a start-up, and grows with the "
                      f"hold; the elastic run's does not. After T0: {per}. {setup}"),
        make_row("elastic: training steps while the node was held", held_e["median"], "steps",
                 baseline=f"fixed node count (nodes: 3), node held {hold_s} s, same run",
                 baseline_value=held_f["median"], higher_is_better=True, goal="> 0",
                 goal_met=all(t["steps_while_held"] > 0 for t in el), runs=held_e["runs"], spread=held_e["spread"],
                 baseline_runs=held_f["runs"], hold_s=hold_s,
                 note=f"loss lines seen between the holder's start and end (sacct). The elastic run keeps its global "
                      f"batch {GBS} on 2 nodes (accumulation 2 -> 3), so these are full steps of the same run; "
                      f"{speed} (the three nodes share this machine's cores; on real nodes a step on 2 of 3 takes "
                      f"about 3/2 as long)"),
    ]


if __name__ == "__main__":
    raise SystemExit(module_main(run, name="bench_elastic"))
