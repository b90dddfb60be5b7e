"""Preemption on the real local Slurm: what one preemption costs, ours vs the reference behaviour, side by side.

For each variant the tiny 2-node job (jobs/ernie_tiny_slurm.yaml) is submitted into the preemptable partition
`low` with a unique run directory and name and ERNIE_CLUSTER_LOSS_LOG set (rank 0 appends one JSON line per step):

    ours       train.checkpoint_on_signal=true   the trainer saves at the next step boundary on Slurm's warning
    reference  train.checkpoint_on_signal=false  no save on the signal: a preemption loses every step since the
                                                 last periodic checkpoint (train.checkpoint_steps)

Once training is TRIGGER_AFTER_CKPT steps past the first periodic checkpoint, a high-priority job that needs every
CPU of both nodes is submitted (`sbatch -p high -N 2 --exclusive -c 4 --wrap 'sleep 2'`); its submission is the
moment of preemption T0. The loss log is polled (every POLL_S s, each line stamped with the time it was first seen),
and so is the run's attempts.jsonl; the figures:

    steps lost     stop step (attempts.jsonl record of the preempted attempt) minus the step the next attempt
                   resumed from ("resumed from ...: step N" in its node0 workerlog.0; 0 when it started afresh).
    seconds from preemption to training resumed
                   T0 -> the first step beyond the stop step seen in the loss log after the restart (replayed
                   steps do not count: the reference has to redo them first).
    seconds of training lost
                   steps lost x the seconds per step measured before T0 in the same job.
    components     T0 -> attempt ended (trainers stopped, job requeued), -> job running again (first line of the
                   next attempt's launcher.log), -> "resumed from" logged, -> first step after the restart
                   (the log-file timestamps have 1 s resolution).

Each job is cancelled as soon as its figures are in (it need not run to max_steps), and waited out before the next
job starts: never two training jobs at once. --quick: one preemption per variant (ours, then reference);
full: REPEATS_FULL per variant, interleaved ours/reference, median and spread. Every job submitted here is
scancelled in a finally block (also when the harness stops the module with SIGTERM).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ernie_cluster import slurm

from ernie_cluster.rundir import AttemptRecord, RunDir

from bench.common import REPO, load_avg, make_row, module_main, slurm_answered, summarize
from bench.slurm_jobs import (LossTail, Stopped, check_alive, first_stamp, job_state, on_sigterm, preemptible_cluster,
                              scancel_and_wait, wait_for_idle_cluster)

PY = sys.executable
TINY = REPO / "jobs" / "ernie_tiny_slurm.yaml"
PARTITION = "low"
CHECKPOINT_STEPS = 50
TRIGGER_AFTER_CKPT = 10        # preempt once training is at CHECKPOINT_STEPS + 10: well inside the next interval
MAX_STEPS = 200                # far beyond the stop; the job is cancelled once the resume is measured
REPEATS_FULL = 3
POLL_S = 0.2
RESUME_GOAL_S = 60.0
VARIANTS = (("ours", True), ("reference", False))


# -------------------------------------------------------------- one trial ---

def _submit(variant: str, on_signal: bool, tmp: Path, idx: int, env: Dict[str, str]) -> Dict[str, Any]:
    name = f"bp-{variant}-{idx}-{os.getpid()}"
    run = tmp / name
    loss_log = tmp / f"{name}.loss.jsonl"
    overrides = [f"output_dir={run}", f"name={name}", f"cluster.partition={PARTITION}",
                 f"train.max_steps={MAX_STEPS}", f"train.checkpoint_steps={CHECKPOINT_STEPS}",
                 f"train.save_steps={MAX_STEPS}", "train.eval_iters=0", "convert.enabled=false",
                 f"train.checkpoint_on_signal={'true' if on_signal else 'false'}"]
    out = subprocess.run([PY, "-m", "ernie_cluster", "submit", str(TINY), *overrides], capture_output=True, text=True,
                         cwd=str(REPO), env={**env, "ERNIE_CLUSTER_LOSS_LOG": str(loss_log)}, timeout=120)
    ids = re.findall(r"^training job: (\d+)", out.stdout, re.M)
    if out.returncode != 0 or not ids:
        raise RuntimeError(f"ernie_cluster submit ({variant}) exited {out.returncode}: "
                           f"{(out.stderr or out.stdout).strip()[-800:]}")
    return {"variant": variant, "name": name, "run": run, "loss_log": loss_log, "job": ids[0]}


def _trial(variant: str, on_signal: bool, tmp: Path, idx: int, env: Dict[str, str], submitted: List[str],
           quick: bool) -> Dict[str, Any]:
    job = _submit(variant, on_signal, tmp, idx, env)
    submitted.append(job["job"])
    tail = LossTail(job["loss_log"])
    t_submit = time.time()
    try:
        # 1. train past the first periodic checkpoint
        _wait_for_step(job, tail, CHECKPOINT_STEPS + TRIGGER_AFTER_CKPT, env, 150 if quick else 400)
        # 2. preempt: a high-priority job that needs both whole nodes
        t0 = time.time()
        out = slurm_answered(slurm.sbatch(["-p", "high", "-N", "2", "--exclusive", "-c", "4", "-J", "bp-preemptor",
                                           "-o", "/dev/null", "--wrap", "sleep 2"], env=env))
        if out.returncode != 0:
            raise RuntimeError(f"sbatch of the preempting job failed: {out.stderr.strip()}")
        submitted.append(slurm.parsable_job_id(out))
        step_at_t0, pre_lines = tail.last_step, list(tail.lines)
        # 3. the preempted attempt ends (node 0 records it in attempts.jsonl)
        record = _wait_for_attempt_end(job, tail, env)
        # 4. the next attempt: first step after the restart, and the first step beyond the stop
        first_after, first_new = _wait_for_resume(job, tail, len(tail.lines), int(record["step"]), env,
                                                  120 if quick else 300)
    finally:
        left = scancel_and_wait([job["job"]], env)
        if left:
            print(f"bench_preempt: WARNING: job {job['job']} still queued after scancel", file=sys.stderr)
    return dict(_figures(job, record, pre_lines, first_after, first_new, t0),
                step_at_t0=step_at_t0, startup_s=tail.lines[0][1] - t_submit)


def _wait_for_step(job: Dict[str, Any], tail: LossTail, step: int, env: Dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_check = 0.0
    while tail.last_step < step:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{job['variant']}: training did not reach step {step} in time (at {tail.last_step}; "
                               f"job state {job_state(job['job'], env)})")
        if time.monotonic() - last_check > 3:
            check_alive(job, env, f"step {step}")
            last_check = time.monotonic()
        time.sleep(POLL_S)
        tail.poll()


def _wait_for_attempt_end(job: Dict[str, Any], tail: LossTail, env: Dict[str, str]) -> AttemptRecord:
    """The record of the preempted attempt (restart 0), which must have stopped short of max_steps."""
    variant, jid = job["variant"], job["job"]
    deadline = time.monotonic() + 90
    record = None
    while record is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{variant}: no end of attempt {jid}-0 recorded 90 s after the preemption "
                               f"(job state {job_state(jid, env)}, loss log at step {tail.last_step})")
        tail.poll()
        record = next((a for a in RunDir(job["run"]).read_attempts() if str(a.get("restart")) == "0"), None)
        if record is None:
            time.sleep(POLL_S)
    tail.poll()
    if record.get("reason") != "stopped":
        raise RuntimeError(f"{variant}: attempt {jid}-0 ended '{record.get('reason')}', not stopped by the "
                           f"preemption: {record.get('message')}")
    if int(record["step"]) >= MAX_STEPS:
        raise RuntimeError(f"{variant}: training reached max_steps before the preemption took effect")
    return record


def _wait_for_resume(job: Dict[str, Any], tail: LossTail, n_before: int, stop_step: int, env: Dict[str, str],
                     timeout: float) -> Tuple[Tuple[int, float], Tuple[int, float]]:
    """(first loss line after the restart, first line beyond the stop step), each (step, time seen)."""
    deadline = time.monotonic() + timeout
    first_after = first_new = None
    last_check = 0.0
    while first_new is None:
        if time.monotonic() > deadline:
            reasons = [a.get("reason") for a in RunDir(job["run"]).read_attempts()]
            raise RuntimeError(f"{job['variant']}: training did not resume within the deadline (job state "
                               f"{job_state(job['job'], env)}, attempts {reasons})")
        if time.monotonic() - last_check > 3:
            check_alive(job, env, "the resume")
            last_check = time.monotonic()
        time.sleep(POLL_S)
        tail.poll()
        after = tail.lines[n_before:]
        if after and first_after is None:
            first_after = after[0]
        first_new = next((ln for ln in after if ln[0] > stop_step), None)
    assert first_after is not None
    return first_after, first_new


def _figures(job: Dict[str, Any], record: AttemptRecord, pre_lines: List[Tuple[int, float]],
             first_after: Tuple[int, float], first_new: Tuple[int, float], t0: float) -> Dict[str, Any]:
    """One trial's figures from the attempt record, the loss lines and the next attempt's logs."""
    variant, jid, stop_step = job["variant"], job["job"], int(record["step"])
    attempt1 = RunDir(job["run"]).attempt_log_dir(jid, 1, 0)
    resumed = first_stamp(attempt1 / "workerlog.0", r"resumed from \S+: step (\d+)")
    restarted = first_stamp(attempt1 / "launcher.log", r"restart=1\b")
    resumed_step = int(resumed[1].group(1)) if resumed else first_after[0] - 1
    if resumed and resumed_step != first_after[0] - 1:
        raise RuntimeError(f"{variant}: workerlog says resumed from step {resumed_step}, loss log restarts at "
                           f"step {first_after[0]}")
    # seconds per step before T0, from step 5 (warm) to the last step seen before T0
    warm = [ln for ln in pre_lines if ln[0] >= 5]
    (s_a, t_a), (s_b, t_b) = warm[0], warm[-1]
    sec_per_step = (t_b - t_a) / max(1, s_b - s_a)
    steps_lost = stop_step - resumed_step
    return {
        "variant": variant, "job": jid, "stop_step": stop_step, "resumed_step": resumed_step,
        "steps_lost": steps_lost, "sec_per_step": sec_per_step, "seconds_lost": steps_lost * sec_per_step,
        "resume_s": first_new[1] - t0,
        "to_attempt_end_s": float(record["ended"]) - t0,
        "to_restart_s": (restarted[0] - t0) if restarted and restarted[0] else None,
        "to_resumed_log_s": (resumed[0] - t0) if resumed and resumed[0] else None,
        "to_first_step_s": first_after[1] - t0,
        "attempt_action": record.get("action"), "attempt_cause": record.get("cause"),
    }


# -------------------------------------------------------------------- run ---

def _med(trials: List[Dict[str, Any]], key: str) -> Optional[float]:
    vals = [t[key] for t in trials if t.get(key) is not None]
    return statistics.median(vals) if vals else None


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.1f}"


def _per_trial(ts: List[Dict[str, Any]]) -> str:
    return "; ".join(f"job {t['job']}: T0 at step {t['step_at_t0']}, stopped at {t['stop_step']}, resumed from "
                     f"{t['resumed_step']}" for t in ts)


def _comp(v: str, c: Dict[str, Optional[float]]) -> str:
    return (f"{v}: attempt ended {_fmt(c['to_attempt_end_s'])} s, job running again {_fmt(c['to_restart_s'])} s, "
            f"'resumed from' logged {_fmt(c['to_resumed_log_s'])} s, first step {_fmt(c['to_first_step_s'])} s, "
            f"first new step {_fmt(c['resume_s'])} s")


def _run_trials(env: Dict[str, str], tmp: Path, submitted: List[str], quick: bool
                ) -> Tuple[Dict[str, List[Dict[str, Any]]], str]:
    """Every variant's trials, interleaved; and a note on failed repeats and other jobs on the cluster."""
    trials: Dict[str, List[Dict[str, Any]]] = {v: [] for v, _ in VARIANTS}
    failures: List[str] = []
    busy_notes: List[str] = []
    for i in range(1 if quick else REPEATS_FULL):
        for variant, on_signal in VARIANTS:
            # other jobs on the nodes would block the preemption (or preempt us): wait for them, bounded
            others = wait_for_idle_cluster(env, submitted, timeout=15 if quick else 900)
            if others:
                busy_notes.append(f"{variant} #{i + 1} started beside: {', '.join(others)[:200]}")
            try:
                trials[variant].append(_trial(variant, on_signal, tmp, i, env, submitted, quick))
            except Stopped:
                raise
            except Exception as exc:  # noqa: BLE001 - one failed repeat in full mode; reraised below if none left
                if quick:
                    raise
                failures.append(f"{variant} #{i + 1}: {exc}")
                print(f"bench_preempt: {variant} #{i + 1} failed: {exc}", file=sys.stderr)
    for variant, _ in VARIANTS:
        if not trials[variant]:
            raise RuntimeError(f"every {variant} repeat failed: {'; '.join(failures)}")
    note = f"; failed repeats: {' | '.join(failures)[:600]}" if failures else ""
    if busy_notes:
        note += f"; other jobs on the cluster: {' | '.join(busy_notes)[:400]}"
    return trials, note


def run(quick: bool) -> List[Dict[str, Any]]:
    env = preemptible_cluster()
    t_start, load_before = time.time(), load_avg()
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    submitted: List[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-preempt-"))
    try:
        trials, extra_note = _run_trials(env, tmp, submitted, quick)
    finally:
        left = scancel_and_wait(submitted, env)
        if left:
            print(f"bench_preempt: WARNING: jobs still queued after scancel: {' '.join(left)}", file=sys.stderr)
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.time() - t_start
    if quick and elapsed > 150:
        extra_note += (f"; --quick took {elapsed:.0f} s, over the harness's 150 s per-module limit: two submit + "
                       f"start-up + preemption + requeue + start-up cycles do not fit on this machine")
    common = (f"tiny 2-node job in partition {PARTITION}, checkpoint_steps={CHECKPOINT_STEPS}, preempted (sbatch -p "
              f"high -N 2 --exclusive) once at step >= {CHECKPOINT_STEPS + TRIGGER_AFTER_CKPT}; "
              f"{len(trials['ours'])}+{len(trials['reference'])} preemptions (ours+reference), one job each, never "
              f"two at once; module {elapsed:.0f} s; load average before/after {load_before}/{load_avg()} on "
              f"{os.cpu_count()} cores")
    return _rows(trials, common + extra_note)


def _rows(trials: Dict[str, List[Dict[str, Any]]], note: str) -> List[Dict[str, Any]]:
    ours, ref = trials["ours"], trials["reference"]
    s_lost_o, s_lost_r = summarize([t["steps_lost"] for t in ours]), summarize([t["steps_lost"] for t in ref])
    res_o, res_r = summarize([t["resume_s"] for t in ours]), summarize([t["resume_s"] for t in ref])
    sec_o, sec_r = summarize([t["seconds_lost"] for t in ours]), summarize([t["seconds_lost"] for t in ref])
    components = {v: {k: _med(ts, k) for k in ("to_attempt_end_s", "to_restart_s", "to_resumed_log_s",
                                                 "to_first_step_s", "resume_s", "sec_per_step", "startup_s")}
                  for v, ts in trials.items()}
    ms_per_step = {v: _fmt(c["sec_per_step"] and c["sec_per_step"] * 1000) for v, c in components.items()}
    raw = {v: [{k: (round(x, 3) if isinstance(x, float) else x) for k, x in t.items()} for t in ts]
           for v, ts in trials.items()}
    baseline = "reference behaviour (no save on signal), same run"
    return [
        make_row("preempt: steps lost per preemption", s_lost_o["median"], "steps", baseline=baseline,
                 baseline_value=s_lost_r["median"], higher_is_better=False, goal="0 beyond the step in flight",
                 goal_met=all(t["steps_lost"] == 0 for t in ours), runs=s_lost_o["runs"], spread=s_lost_o["spread"],
                 baseline_runs=s_lost_r["runs"], baseline_spread=s_lost_r["spread"],
                 note=f"stop step (attempts.jsonl) minus the step the next attempt resumed from (its workerlog). "
                      f"ours: {_per_trial(ours)}. reference: {_per_trial(ref)}. {note}"),
        make_row("preempt: seconds from preemption to training resumed", res_o["median"], "s", baseline=baseline,
                 baseline_value=res_r["median"], higher_is_better=False,
                 goal=f"< {RESUME_GOAL_S:g} s on the local Slurm",
                 goal_met=res_o["median"] < RESUME_GOAL_S, runs=res_o["runs"], spread=res_o["spread"],
                 baseline_runs=res_r["runs"], baseline_spread=res_r["spread"], components=components,
                 note=f"T0 = submission of the high job -> first step beyond the stop step in the loss log (the "
                      f"reference replays the lost steps first). Medians after T0: "
                      f"{_comp('ours', components['ours'])}; {_comp('reference', components['reference'])} (log "
                      f"stamps 1 s resolution; includes Slurm's requeue delay and a fresh paddle start-up)"),
        make_row("preempt: seconds of training lost", sec_o["median"], "s", baseline=baseline,
                 baseline_value=sec_r["median"], higher_is_better=False, goal="0 beyond the step in flight",
                 goal_met=all(t["steps_lost"] == 0 for t in ours), runs=sec_o["runs"], spread=sec_o["spread"],
                 baseline_runs=sec_r["runs"], baseline_spread=sec_r["spread"], trials=raw,
                 note=f"steps lost x seconds per step measured before T0 in the same job (ours {ms_per_step['ours']} "
                      f"ms, reference {ms_per_step['reference']} ms per step on this CPU); on a real job the same "
                      f"step counts cost the real step time"),
    ]


if __name__ == "__main__":
    raise SystemExit(module_main(run, name="bench_preempt"))
