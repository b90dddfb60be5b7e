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

import datetime as _dt
import json
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

from bench.common import REPO, Skip, load_avg, make_row, module_main, slurm_available, slurm_env, summarize

PY = sys.executable
TINY = REPO / "jobs" / "ernie_tiny_slurm.yaml"
PARTITION = "low"
CHECKPOINT_STEPS = 50
TRIGGER_AFTER_CKPT = 10        # preempt once training is at CHECKPOINT_STEPS + 10: well inside the next interval
MAX_STEPS = 200                # far beyond the stop; the job is cancelled once the resume is measured
REPEATS_FULL = 3
POLL_S = 0.2
RESUME_GOAL_S = 60.0
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
VARIANTS = (("ours", True), ("reference", False))


class _Stopped(Exception):
    """SIGTERM from the harness: unwind so the finally blocks scancel our jobs."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Stopped(f"stopped by signal {signum}")


# ------------------------------------------------------------------ slurm ---

def _answered(out: slurm.Answer) -> slurm.Reply:
    """Slurm's reply; the benchmark stops when Slurm does not answer (a missing or hung tool)."""
    if isinstance(out, slurm.NoAnswer):
        raise RuntimeError(f"{out.args[0]} did not answer: {out.reason}")
    return out


def _queue(env: Dict[str, str]) -> List[Tuple[str, str, str, str]]:
    """(job id, partition, name, state) of every job in squeue."""
    out = _answered(slurm.squeue("%i|%P|%j|%T", env=env))
    return [tuple(line.split("|", 3)) for line in out.stdout.splitlines() if line.count("|") == 3]  # type: ignore[misc]


def _job_state(job_id: str, env: Dict[str, str]) -> Optional[str]:
    """squeue state, or the last sacct state once it left the queue; None when neither knows it."""
    out = _answered(slurm.squeue("%T", [job_id], env=env))
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.split()[0]
    out = _answered(slurm.sacct("State", [job_id], env=env))
    states = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return states[-1] if states else None


def _scancel_and_wait(ids: List[str], env: Dict[str, str], timeout: float = 60) -> List[str]:
    """scancel these jobs and wait until none is in squeue; returns those still there at the deadline."""
    ids = sorted({i for i in ids if i}, key=int)
    if not ids:
        return []
    deadline = time.monotonic() + timeout
    left = ids
    while True:
        _answered(slurm.scancel(left, env=env))
        out = _answered(slurm.squeue("%i", left, env=env))
        left = [i for i in out.stdout.split() if i in ids]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


def _wait_for_idle_cluster(env: Dict[str, str], ours: List[str], timeout: float) -> List[str]:
    """Wait (bounded) until no other job is queued or running; returns what is still there (for the note)."""
    deadline = time.monotonic() + timeout
    while True:
        others = [f"{j} ({p}, {n}, {s})" for j, p, n, s in _queue(env) if j not in ours]
        if not others or time.monotonic() > deadline:
            return others
        time.sleep(2)


# ------------------------------------------------------------------ files ---

class LossTail:
    """Incremental reader of the loss log: (step, time first seen) per complete line."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.buf = ""
        self.lines: List[Tuple[int, float]] = []

    def poll(self) -> None:
        try:
            with open(self.path, "r", encoding="utf-8") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
                self.offset = fh.tell()
        except FileNotFoundError:
            return
        now = time.time()
        self.buf += chunk
        *complete, self.buf = self.buf.split("\n")
        for line in complete:
            if line.strip():
                self.lines.append((int(json.loads(line)["step"]), now))

    @property
    def last_step(self) -> int:
        return self.lines[-1][0] if self.lines else 0


def _attempts(run: Path) -> List[Dict[str, Any]]:
    try:
        text = (run / "attempts.jsonl").read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


def _first_stamp(path: Path, pattern: str) -> Optional[Tuple[float, re.Match]]:
    """Local-time stamp (1 s resolution) and match of the first line matching `pattern`, e.g. in a workerlog."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    rx = re.compile(pattern)
    for line in text.splitlines():
        m = rx.search(line)
        if m:
            stamp = re.match(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)", line)
            when = _dt.datetime.fromisoformat(f"{stamp.group(1)} {stamp.group(2)}").timestamp() if stamp else None
            return when, m
    return None


def _tail(path: Path, n: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return f"(no {path.name})"


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


def _check_alive(job: Dict[str, Any], env: Dict[str, str], what: str) -> None:
    state = _job_state(job["job"], env)
    if state in TERMINAL:
        launcher = job["run"] / "logs" / f"attempt-{job['job']}-0" / "node0" / "launcher.log"
        raise RuntimeError(f"{job['variant']} job {job['job']} ended ({state}) while waiting for {what}; "
                           f"launcher.log tail:\n{_tail(launcher)}")


def _trial(variant: str, on_signal: bool, tmp: Path, idx: int, env: Dict[str, str], submitted: List[str],
           quick: bool) -> Dict[str, Any]:
    job = _submit(variant, on_signal, tmp, idx, env)
    submitted.append(job["job"])
    run, jid = job["run"], job["job"]
    tail = LossTail(job["loss_log"])
    trigger = CHECKPOINT_STEPS + TRIGGER_AFTER_CKPT
    t_submit = time.time()
    try:
        # 1. train past the first periodic checkpoint
        deadline = time.monotonic() + (150 if quick else 400)
        last_check = 0.0
        while tail.last_step < trigger:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{variant}: training did not reach step {trigger} in time (at {tail.last_step}; "
                                   f"job state {_job_state(jid, env)})")
            if time.monotonic() - last_check > 3:
                _check_alive(job, env, f"step {trigger}")
                last_check = time.monotonic()
            time.sleep(POLL_S)
            tail.poll()
        first_step_at = tail.lines[0][1]

        # 2. preempt: a high-priority job that needs both whole nodes
        t0 = time.time()
        out = _answered(slurm.sbatch(["-p", "high", "-N", "2", "--exclusive", "-c", "4", "-J", "bp-preemptor",
                                      "-o", "/dev/null", "--wrap", "sleep 2"], env=env))
        if out.returncode != 0:
            raise RuntimeError(f"sbatch of the preempting job failed: {out.stderr.strip()}")
        high = slurm.parsable_job_id(out)
        submitted.append(high)
        step_at_t0 = tail.last_step
        pre_lines = list(tail.lines)

        # 3. the preempted attempt ends (node 0 records it in attempts.jsonl)
        deadline = time.monotonic() + 90
        record = None
        while record is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{variant}: no end of attempt {jid}-0 recorded 90 s after the preemption "
                                   f"(job state {_job_state(jid, env)}, loss log at step {tail.last_step})")
            tail.poll()
            record = next((a for a in _attempts(run) if str(a.get("restart")) == "0"), None)
            if record is None:
                time.sleep(POLL_S)
        tail.poll()
        n_before = len(tail.lines)
        if record.get("reason") != "stopped":
            raise RuntimeError(f"{variant}: attempt {jid}-0 ended '{record.get('reason')}', not stopped by the "
                               f"preemption: {record.get('message')}")
        stop_step = int(record["step"])
        if stop_step >= MAX_STEPS:
            raise RuntimeError(f"{variant}: training reached max_steps before the preemption took effect")

        # 4. the next attempt: first step after the restart, and the first step beyond the stop
        deadline = time.monotonic() + (120 if quick else 300)
        first_after = first_new = None
        last_check = 0.0
        while first_new is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{variant}: training did not resume within the deadline (job state "
                                   f"{_job_state(jid, env)}, attempts {[a.get('reason') for a in _attempts(run)]})")
            if time.monotonic() - last_check > 3:
                _check_alive(job, env, "the resume")
                last_check = time.monotonic()
            time.sleep(POLL_S)
            tail.poll()
            after = tail.lines[n_before:]
            if after and first_after is None:
                first_after = after[0]
            first_new = next((ln for ln in after if ln[0] > stop_step), None)
    finally:
        left = _scancel_and_wait([jid], env)
        if left:
            print(f"bench_preempt: WARNING: job {jid} still queued after scancel", file=sys.stderr)

    attempt1 = run / "logs" / f"attempt-{jid}-1" / "node0"
    resumed = _first_stamp(attempt1 / "workerlog.0", r"resumed from \S+: step (\d+)")
    restarted = _first_stamp(attempt1 / "launcher.log", r"restart=1\b")
    resumed_step = int(resumed[1].group(1)) if resumed else first_after[0] - 1
    if resumed and first_after and resumed_step != first_after[0] - 1:
        raise RuntimeError(f"{variant}: workerlog says resumed from step {resumed_step}, loss log restarts at "
                           f"step {first_after[0]}")
    # seconds per step before T0, from step 5 (warm) to the last step seen before T0
    warm = [ln for ln in pre_lines if ln[0] >= 5]
    (s_a, t_a), (s_b, t_b) = warm[0], warm[-1]
    sec_per_step = (t_b - t_a) / max(1, s_b - s_a)
    steps_lost = stop_step - resumed_step
    return {
        "variant": variant, "job": jid, "stop_step": stop_step, "step_at_t0": step_at_t0, "resumed_step": resumed_step,
        "steps_lost": steps_lost, "sec_per_step": sec_per_step, "seconds_lost": steps_lost * sec_per_step,
        "resume_s": first_new[1] - t0,
        "to_attempt_end_s": float(record["ended"]) - t0,
        "to_restart_s": (restarted[0] - t0) if restarted and restarted[0] else None,
        "to_resumed_log_s": (resumed[0] - t0) if resumed and resumed[0] else None,
        "to_first_step_s": first_after[1] - t0,
        "startup_s": first_step_at - t_submit,
        "attempt_action": record.get("action"), "attempt_cause": record.get("cause"),
    }


# -------------------------------------------------------------------- run ---

def _med(trials: List[Dict[str, Any]], key: str) -> Optional[float]:
    vals = [t[key] for t in trials if t.get(key) is not None]
    return statistics.median(vals) if vals else None


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.1f}"


def run(quick: bool) -> List[Dict[str, Any]]:
    env = slurm_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    problem = slurm_available(env)
    if problem:
        raise Skip(f"needs a Slurm controller: {problem}")
    names = slurm.sinfo_partitions(env=env, timeout="query")
    parts = [] if isinstance(names, slurm.NoAnswer) else names
    if not {"low", "high"} <= {p.rstrip("*") for p in parts}:
        raise Skip(f"needs partitions low (PreemptMode=REQUEUE) and high (the local cluster of scripts/local-slurm); "
                   f"this Slurm has {parts}")

    t_start = time.time()
    load_before = load_avg()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    submitted: List[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-preempt-"))
    trials: Dict[str, List[Dict[str, Any]]] = {v: [] for v, _ in VARIANTS}
    failures: List[str] = []
    busy_notes: List[str] = []
    repeats = 1 if quick else REPEATS_FULL
    try:
        for i in range(repeats):
            for variant, on_signal in VARIANTS:
                # other jobs on the nodes would block the preemption (or preempt us): wait for them, bounded
                others = _wait_for_idle_cluster(env, submitted, timeout=15 if quick else 900)
                if others:
                    busy_notes.append(f"{variant} #{i + 1} started beside: {', '.join(others)[:200]}")
                try:
                    trials[variant].append(_trial(variant, on_signal, tmp, i, env, submitted, quick))
                except _Stopped:
                    raise
                except Exception as exc:  # noqa: BLE001 - one failed repeat in full mode; reraised below if none left
                    if quick:
                        raise
                    failures.append(f"{variant} #{i + 1}: {exc}")
                    print(f"bench_preempt: {variant} #{i + 1} failed: {exc}", file=sys.stderr)
        for variant, _ in VARIANTS:
            if not trials[variant]:
                raise RuntimeError(f"every {variant} repeat failed: {'; '.join(failures)}")
    finally:
        left = _scancel_and_wait(submitted, env)
        if left:
            print(f"bench_preempt: WARNING: jobs still queued after scancel: {' '.join(left)}", file=sys.stderr)
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.time() - t_start

    ours, ref = trials["ours"], trials["reference"]
    s_lost_o, s_lost_r = summarize([t["steps_lost"] for t in ours]), summarize([t["steps_lost"] for t in ref])
    res_o, res_r = summarize([t["resume_s"] for t in ours]), summarize([t["resume_s"] for t in ref])
    sec_o, sec_r = summarize([t["seconds_lost"] for t in ours]), summarize([t["seconds_lost"] for t in ref])

    def per_trial(ts: List[Dict[str, Any]]) -> str:
        return "; ".join(f"job {t['job']}: T0 at step {t['step_at_t0']}, stopped at {t['stop_step']}, resumed from "
                         f"{t['resumed_step']}" for t in ts)

    common = (f"tiny 2-node job in partition {PARTITION}, checkpoint_steps={CHECKPOINT_STEPS}, preempted (sbatch -p "
              f"high -N 2 --exclusive) once at step >= {CHECKPOINT_STEPS + TRIGGER_AFTER_CKPT}; "
              f"{len(ours)}+{len(ref)} preemptions (ours+reference), one job each, never two at once; "
              f"module {elapsed:.0f} s; load average before/after {load_before}/{load_avg()} on "
              f"{os.cpu_count()} cores")
    extra_note = ""
    if failures:
        extra_note += f"; failed repeats: {' | '.join(failures)[:600]}"
    if busy_notes:
        extra_note += f"; other jobs on the cluster: {' | '.join(busy_notes)[:400]}"
    if quick and elapsed > 150:
        extra_note += (f"; --quick took {elapsed:.0f} s, over the harness's 150 s per-module limit: two submit + "
                       f"start-up + preemption + requeue + start-up cycles do not fit on this machine")

    components = {v: {k: _med(ts, k) for k in ("to_attempt_end_s", "to_restart_s", "to_resumed_log_s",
                                                 "to_first_step_s", "resume_s", "sec_per_step", "startup_s")}
                  for v, ts in trials.items()}

    def comp(v: str) -> str:
        c = components[v]
        return (f"{v}: attempt ended {_fmt(c['to_attempt_end_s'])} s, job running again {_fmt(c['to_restart_s'])} s, "
                f"'resumed from' logged {_fmt(c['to_resumed_log_s'])} s, first step {_fmt(c['to_first_step_s'])} s, "
                f"first new step {_fmt(c['resume_s'])} s")

    raw = {v: [{k: (round(x, 3) if isinstance(x, float) else x) for k, x in t.items()} for t in ts]
           for v, ts in trials.items()}
    rows = [
        make_row("preempt: steps lost per preemption", s_lost_o["median"], "steps",
                 baseline="reference behaviour (no save on signal), same run", baseline_value=s_lost_r["median"],
                 higher_is_better=False, goal="0 beyond the step in flight",
                 goal_met=all(t["steps_lost"] == 0 for t in ours), runs=s_lost_o["runs"], spread=s_lost_o["spread"],
                 baseline_runs=s_lost_r["runs"], baseline_spread=s_lost_r["spread"],
                 note=f"stop step (attempts.jsonl) minus the step the next attempt resumed from (its workerlog). "
                      f"ours: {per_trial(ours)}. reference: {per_trial(ref)}. {common}{extra_note}"),
        make_row("preempt: seconds from preemption to training resumed", res_o["median"], "s",
                 baseline="reference behaviour (no save on signal), same run", baseline_value=res_r["median"],
                 higher_is_better=False, goal=f"< {RESUME_GOAL_S:g} s on the local Slurm",
                 goal_met=res_o["median"] < RESUME_GOAL_S, runs=res_o["runs"], spread=res_o["spread"],
                 baseline_runs=res_r["runs"], baseline_spread=res_r["spread"], components=components,
                 note=f"T0 = submission of the high job -> first step beyond the stop step in the loss log (the "
                      f"reference replays the lost steps first). Medians after T0: {comp('ours')}; {comp('reference')} "
                      f"(log stamps 1 s resolution; includes Slurm's requeue delay and a fresh paddle start-up)"),
        make_row("preempt: seconds of training lost", sec_o["median"], "s",
                 baseline="reference behaviour (no save on signal), same run", baseline_value=sec_r["median"],
                 higher_is_better=False, goal="0 beyond the step in flight",
                 goal_met=all(t["steps_lost"] == 0 for t in ours), runs=sec_o["runs"], spread=sec_o["spread"],
                 baseline_runs=sec_r["runs"], baseline_spread=sec_r["spread"], trials=raw,
                 note=f"steps lost x seconds per step measured before T0 in the same job (ours "
                      f"{_fmt(components['ours']['sec_per_step'] and components['ours']['sec_per_step'] * 1000)} ms, "
                      f"reference {_fmt(components['reference']['sec_per_step'] and components['reference']['sec_per_step'] * 1000)} ms "
                      f"per step on this CPU); on a real job the same step counts cost the real step time"),
    ]
    return rows


if __name__ == "__main__":
    raise SystemExit(module_main(run, name="bench_preempt"))
