"""A hung job on the real local Slurm: time from the hang to training resumed, with hang detection (ours) and
without it (the hang lasts until the job's time limit), side by side in one run.

Two copies of the tiny 2-node job (jobs/ernie_tiny_slurm.yaml, partition debug, checkpoint_steps=20) are
submitted at the same moment, each with its own run directory and ERNIE_CLUSTER_LOSS_LOG (rank 0 appends one JSON
line per step). Both get the same watchdog limits, sized for the tiny model (WATCHDOG: training
max(20 x the median step, step_s_min=10 s), the median step being about 0.15 s; warm-up 60 s; checkpoint and
evaluation 30 s; start-up and data 120 s); they differ only in:

    ours      cluster.watchdog.enabled=true, and the yaml's 15-minute time limit
    baseline  cluster.watchdog.enabled=false (the launcher only logs "WARNING: hung, not stopped") and a short
              Slurm time limit, cluster.time = BASELINE_TIME (2 minutes with --quick, 4 without; Slurm's warning
              comes signal_lead_s=60 s before it, give or take its 30 s check)

The hang: when a job's loss log reaches HANG_STEP (a few steps past the checkpoint at step 20), every trainer of
the job is frozen (Freezer: every thread ptrace-stopped): T_hang. Not SIGSTOP, and not one trainer only:
  * SIGSTOPped trainers are revived at the time-limit warning (seen on this Slurm: its signal delivery resumes
    the step's stopped processes; they then save at the next step boundary: no hang any more), and by the
    watchdog's stack dump (SIGCONT); a frozen one handles no signal at all, like a trainer stuck in
    uninterruptible I/O, and only SIGKILL ends it;
  * on this CPU path a rank left waiting for a stopped peer in an all-reduce is killed after 30 s by gloo's fixed
    collective timeout (paddle 2.6 creates ProcessGroupGloo without a timeout of its own), so stopping one rank
    measures gloo, not the time limit. On GPUs (NCCL, PADDLE_PG_TIMEOUT = 30 minutes) a hung rank holds the others
    that long: a job that makes no progress while nothing times out is what freezing every trainer reproduces.
The figures, each from T_hang:

    resumed    -> the first training step after a requeue: the first loss-log line that goes back to a step
                  already logged (polled every POLL_S s, stamped when first seen). A baseline job that its time
                  limit ended without a requeue (Slurm's TIMEOUT: its launchers are killed KillWait after the
                  limit, before they have ended the frozen trainers) never resumes by itself; its figure is then
                  the end of the job, a lower bound, and the note says so
    ended      -> the end of the hung attempt: `ended` of its attempts.jsonl record (ours: cause `hung`), or the
                  job's end in sacct when no record was written
    steps lost the last step logged before the hang minus the step training resumed from ("resumed from ...:
               step N" in the requeued attempt's node-0 workerlog.0; without a requeue, the newest complete
               checkpoint, which a manual `submit --resume` would take): the same for both
    components T_hang -> hang logged by the watchdog (ERROR, or the baseline's WARNING), -> Slurm's time-limit
               warning (baseline), -> attempt ended, -> requeued job running again (first line of its node-0
               launcher.log), -> "resumed from" logged, -> first step (log stamps have 1 s resolution); and the time
               left in the allocation at T_hang (squeue's end time)

The baseline figure is mostly the time left in the allocation when the hang happened: on a real job with
`cluster.time: 24:00:00` that is on average half a day, not the minute or two here.

Each job is cancelled as soon as its figures are in; every job submitted here is scancelled in a finally block
(also when the harness stops the module with SIGTERM), and a frozen trainer still alive then is killed first.
--quick: one pair (about 2.5 minutes); full: REPEATS_FULL pairs, median and spread.
"""

from __future__ import annotations

import errno
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
from ernie_cluster.procs import pid_alive, start_ticks
from ernie_cluster.rundir import RunDir

from bench.common import REPO, load_avg, make_row, module_main, slurm_answered, slurm_cluster_env, summarize
from bench.slurm_jobs import (TERMINAL, LossTail, check_alive, first_stamp, job_state, on_sigterm,
                              scancel_and_wait)

PY = sys.executable
HANG_LOGGED = r"(?:ERROR: hung|WARNING: hung, not stopped)\b.*?\(limit (\d+)s"
TINY = REPO / "jobs" / "ernie_tiny_slurm.yaml"
PARTITION = "debug"              # not preemptable: another bench's preemption cannot end our attempts
CHECKPOINT_STEPS = 20
HANG_STEP = 25                   # freeze once the loss log is here: past the checkpoint, well inside the next one
NODES = 2                        # jobs/ernie_tiny_slurm.yaml: 2 nodes x 1 trainer, node k runs rank k
MAX_STEPS = 5000                 # never reached: each job is cancelled once its resume is measured
POLL_S = 0.2
WATCHDOG = {"step_s_min": 10, "step_factor": 20, "warmup_s": 60, "checkpoint_s": 30, "evaluation_s": 30,
            "startup_s": 120, "data_s": 120}
BASELINE_TIME = {True: "00:02:00", False: "00:04:00"}  # by quick
SIGNAL_LEAD_S = 60               # jobs/ernie_tiny_slurm.yaml's cluster.requeue.signal_lead_s
REPEATS_FULL = 3
# Goals, on top of the watchdog's limit: its 5 s poll, the 5 s stack dump a frozen trainer never answers, up to
# 45 s from SIGTERM to the launcher's SIGKILL (kill_after_s), 5 s slack: the attempt has ended; then about 35 s
# of Slurm's requeue and a fresh start-up (bench_preempt's figure): training has resumed.
ENDED_MARGIN_S = 60.0
RESUME_MARGIN_S = 95.0


class Freezer:
    """Freeze processes as a hang does: ptrace-stop every thread (PTRACE_SEIZE + PTRACE_INTERRUPT). Unlike SIGSTOP,
    a ptrace-stop is not ended by SIGCONT (Slurm's signal delivery sends one, which would revive a SIGSTOPped
    trainer at the time-limit warning) and no handler runs: only SIGKILL ends the process, as with a trainer stuck
    in uninterruptible I/O. Each thread's exit is collected here (waitpid), so that its parent can reap it."""

    _PTRACE_SEIZE, _PTRACE_INTERRUPT, _WALL = 0x4206, 0x4207, 0x40000000

    def __init__(self) -> None:
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        self._libc.ptrace.restype = ctypes.c_long
        self.tids: Dict[int, int] = {}  # traced thread -> its process
        self.procs: List[Tuple[int, Optional[int]]] = []  # (pid, start ticks) of the frozen processes

    def freeze(self, pid: int) -> None:
        import ctypes

        self.procs.append((pid, start_ticks(pid)))
        for _ in range(3):  # a thread started while the others were seized is taken on the next pass
            new = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) not in self.tids]
            if not new:
                return
            for tid in new:
                if self._libc.ptrace(self._PTRACE_SEIZE, tid, None, None) != 0:
                    if ctypes.get_errno() == errno.ESRCH:  # the thread ended meanwhile
                        continue
                    raise RuntimeError(f"cannot freeze thread {tid} of pid {pid} with ptrace: "
                                       f"{os.strerror(ctypes.get_errno())}")
                self.tids[tid] = pid
                self._libc.ptrace(self._PTRACE_INTERRUPT, tid, None, None)
                deadline = time.monotonic() + 5
                while os.waitpid(tid, os.WNOHANG | self._WALL)[0] == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)

    def reap(self) -> None:
        """Collect the exits of frozen threads (killed meanwhile); leave the others frozen."""
        for tid in list(self.tids):
            try:
                got, status = os.waitpid(tid, os.WNOHANG | self._WALL)
            except ChildProcessError:
                del self.tids[tid]
                continue
            if got and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
                del self.tids[tid]

    def kill_all(self) -> None:
        """SIGKILL every frozen process still alive (same pid, same start) and collect the exits."""
        for pid, ticks in self.procs:
            if pid_alive(pid) and start_ticks(pid) == ticks:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        while self.tids and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)


class Trial:
    """One job of a pair: submitted, frozen at HANG_STEP, followed to its first step after the requeue (or, when
    nothing requeues it, to the end of the job)."""

    def __init__(self, variant: str, overrides: List[str], tmp: Path, idx: int, env: Dict[str, str]):
        self.variant, self.env = variant, env
        name = f"bh-{variant}-{idx}-{os.getpid()}"
        self.run = tmp / name
        self.loss_log = tmp / f"{name}.loss.jsonl"
        out = subprocess.run(
            [PY, "-m", "ernie_cluster", "submit", str(TINY), f"output_dir={self.run}", f"name={name}",
             f"cluster.partition={PARTITION}", f"train.max_steps={MAX_STEPS}",
             f"train.checkpoint_steps={CHECKPOINT_STEPS}", f"train.save_steps={MAX_STEPS}", "train.eval_iters=0",
             "convert.enabled=false", "cluster.requeue.max_failure_requeues=1", *overrides],
            capture_output=True, text=True, cwd=str(REPO), env={**env, "ERNIE_CLUSTER_LOSS_LOG": str(self.loss_log)},
            timeout=120)
        ids = re.findall(r"^training job: (\d+)", out.stdout, re.M)
        if out.returncode != 0 or not ids:
            raise RuntimeError(f"ernie_cluster submit ({variant}) exited {out.returncode}: "
                               f"{(out.stderr or out.stdout).strip()[-800:]}")
        self.job = ids[0]
        self.tail = LossTail(self.loss_log)
        self.t_submit = time.time()
        self.freezer = Freezer()
        self.t_hang: Optional[float] = None
        self.step_at_hang = 0
        self.n_at_hang = 0
        self.alloc_end: Optional[float] = None
        self.record: Optional[Dict[str, Any]] = None
        self.last_step = 0  # the highest step logged before the requeued attempt's first
        self.first_after: Optional[Tuple[int, float]] = None
        self.final_state: Optional[str] = None  # Slurm's state when the job ended without a requeue
        self.job_end: Optional[float] = None
        self.done = False
        self._last_check = 0.0

    def poll(self) -> None:
        """Advance: training -> frozen at HANG_STEP -> attempt recorded -> first step after the requeue, or the
        job's end when nothing requeued it."""
        self.tail.poll()
        self.freezer.reap()
        check = time.monotonic() - self._last_check > 3
        if check:
            self._last_check = time.monotonic()
        if self.t_hang is None:
            if check:
                check_alive({"variant": self.variant, "job": self.job, "run": self.run}, self.env, "the hang")
            if self.tail.last_step >= HANG_STEP:
                self._freeze_trainers()
            return
        if self.record is None:
            self.record = next((a for a in RunDir(self.run).read_attempts() if str(a.get("restart")) == "0"), None)
        if self.first_after is None:
            self._find_restart()
        if self.record is not None and self.first_after is not None and self._resumed() is not None:
            self.done = True
        elif check and (state := job_state(self.job, self.env)) in TERMINAL:
            self.final_state, self.done = state, True
            out = slurm_answered(slurm.sacct("End", [self.job], env=self.env))
            ends = [slurm.parse_timestamp(x) for x in out.stdout.split()]
            self.job_end = next((e for e in reversed(ends) if e), None)

    def _freeze_trainers(self) -> None:
        """Freeze every trainer of attempt 0 (Freezer): no step, no heartbeat, no signal handled from now on."""
        for k in range(NODES):
            pid_file = RunDir(self.run).attempt_log_dir(self.job, 0, k) / "control" / f"trainer.{k}.pid"
            self.freezer.freeze(int(pid_file.read_text()))
        self.t_hang = time.time()
        self.tail.poll()
        self.step_at_hang, self.n_at_hang = self.tail.last_step, len(self.tail.lines)
        end = slurm_answered(slurm.squeue("%e", [self.job], env=self.env))
        self.alloc_end = slurm.parse_timestamp(end.stdout.strip()) if end.returncode == 0 else None

    def _find_restart(self) -> None:
        """Frozen trainers log nothing: the first line that goes back to a step already logged is the requeued
        attempt's; the highest step before it is the last one before the hang."""
        top = max((s for s, _ in self.tail.lines[:self.n_at_hang]), default=0)
        for line in self.tail.lines[self.n_at_hang:]:
            if line[0] <= top:
                self.first_after, self.last_step = line, top
                return
            top = line[0]

    def _resumed(self) -> Optional[Tuple[Optional[float], re.Match]]:
        return first_stamp(RunDir(self.run).attempt_log_dir(self.job, 1, 0) / "workerlog.0",
                           r"resumed from \S+: step (\d+)")

    def figures(self) -> Dict[str, Any]:
        assert self.t_hang is not None
        t0, rec = self.t_hang, self.record or {}
        resumed = self._resumed() if self.first_after is not None else None
        if self.variant == "ours" and (resumed is None or (rec.get("reason"), rec.get("cause")) != ("failed", "hung")):
            raise RuntimeError(f"ours: attempt {self.job}-0 ended {rec.get('reason')}/{rec.get('cause')} (job "
                               f"{self.final_state or 'requeued'}), not as hung and requeued: {rec.get('message')}")
        if self.variant == "baseline" and rec.get("cause") == "hung":
            raise RuntimeError(f"baseline: attempt {self.job}-0 ended as hung with the watchdog off")
        logs = [RunDir(self.run).attempt_log_dir(self.job, 0, k) / "launcher.log" for k in range(NODES)]
        logged = _earliest(logs, HANG_LOGGED)
        warned = _earliest(logs, r"received SIGUSR\d") if self.variant == "baseline" else None
        restarted = first_stamp(RunDir(self.run).attempt_log_dir(self.job, 1, 0) / "launcher.log", r".")
        ended = float(rec["ended"]) if rec.get("ended") else self.job_end
        last = self.last_step or self.tail.last_step
        # without a resume: what a manual `submit --resume` would start from, the newest complete checkpoint
        from_step = int(resumed[1].group(1)) if resumed else _newest_checkpoint(self.run)

        def since(stamp: Optional[Tuple[Optional[float], Any]]) -> Optional[float]:
            return stamp[0] - t0 if stamp and stamp[0] else None

        return {
            "variant": self.variant, "job": self.job, "step_at_hang": self.step_at_hang, "last_step": last,
            "resumed_step": from_step, "steps_lost": last - from_step if from_step is not None else None,
            "resumed": resumed is not None, "job_state": self.final_state or "requeued",
            "startup_s": self.tail.lines[0][1] - self.t_submit, "hang_after_submit_s": t0 - self.t_submit,
            "left_in_allocation_s": (self.alloc_end - t0) if self.alloc_end else None,
            "attempt_reason": rec.get("reason"), "attempt_cause": rec.get("cause"), "action": rec.get("action"),
            "watchdog_limit_s": float(logged[1].group(1)) if logged else None,
            "hang_logged_s": since(logged), "warning_s": since(warned),
            "ended_s": (ended - t0) if ended else None,
            "to_restart_s": since(restarted), "to_resumed_log_s": since(resumed),
            "resume_s": (self.first_after[1] - t0) if resumed and self.first_after else None,
            "first_step_after": self.first_after[0] if resumed and self.first_after else None,
        }


def _newest_checkpoint(run: Path) -> Optional[int]:
    steps = [int(m.group(1)) for p in (run / "checkpoints").glob("step_*/MANIFEST.json")
             if (m := re.match(r"step_0*(\d+)$", p.parent.name))]
    return max(steps, default=None)


def _earliest(paths: List[Path], pattern: str) -> Optional[Tuple[Optional[float], re.Match]]:
    """The earliest stamped line matching `pattern` in any of these logs (see first_stamp)."""
    found = [f for f in (first_stamp(p, pattern) for p in paths) if f is not None]
    return min(found, key=lambda f: f[0] or float("inf")) if found else None


def _variants(quick: bool) -> Dict[str, List[str]]:
    limits = [f"cluster.watchdog.{k}={v}" for k, v in WATCHDOG.items()]
    return {"ours": ["cluster.watchdog.enabled=true", *limits],
            "baseline": ["cluster.watchdog.enabled=false", *limits, f"cluster.time={BASELINE_TIME[quick]}"]}


def _pair(tmp: Path, idx: int, env: Dict[str, str], quick: bool) -> Dict[str, Dict[str, Any]]:
    """Both variants at once; each job cancelled as soon as its figures are in, and in any case on the way out."""
    trials: List[Trial] = []
    limit_s = {"ours": 300.0, "baseline": 300.0 + float(slurm.slurm_time_to_seconds(BASELINE_TIME[quick]))}
    try:
        for variant, overrides in _variants(quick).items():
            trials.append(Trial(variant, overrides, tmp, idx, env))
        start = time.monotonic()
        while not all(t.done for t in trials):
            for t in (t for t in trials if not t.done):
                t.poll()
                if t.done:
                    t.freezer.kill_all()
                    scancel_and_wait([t.job], env)
                elif time.monotonic() - start > limit_s[t.variant]:
                    reasons = [(a.get("reason"), a.get("cause")) for a in RunDir(t.run).read_attempts()]
                    raise RuntimeError(f"{t.variant} job {t.job}: no resume and no end {limit_s[t.variant]:.0f} s "
                                       f"after the submit (loss log at step {t.tail.last_step}, frozen at "
                                       f"{t.step_at_hang or '-'}, attempts {reasons})")
            time.sleep(POLL_S)
        return {t.variant: t.figures() for t in trials}
    finally:
        for t in trials:
            t.freezer.kill_all()
        left = scancel_and_wait([t.job for t in trials], env)
        if left:
            print(f"bench_hang: WARNING: jobs still queued after scancel: {' '.join(left)}", file=sys.stderr)


def run(quick: bool) -> List[Dict[str, Any]]:
    env = slurm_cluster_env()
    t_start, load_before = time.time(), load_avg()
    previous = signal.signal(signal.SIGTERM, on_sigterm)  # the harness's stop unwinds through _pair's cleanup
    tmp = Path(tempfile.mkdtemp(prefix="bench-hang-"))
    try:
        pairs = [_pair(tmp, i, env, quick) for i in range(1 if quick else REPEATS_FULL)]
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.time() - t_start
    limits = (f"both: cluster.watchdog {', '.join(f'{k}={v}' for k, v in WATCHDOG.items())} (training limit "
              f"max(step_factor x median step, step_s_min)); ours: watchdog.enabled=true, cluster.time 15 min; "
              f"baseline: watchdog.enabled=false, cluster.time={BASELINE_TIME[quick]} (Slurm's warning "
              f"signal_lead_s={SIGNAL_LEAD_S} s before it)")
    machine = (f"module {elapsed:.0f} s; load average before/after {load_before}/{load_avg()} on {os.cpu_count()} "
               f"cores")
    return _rows(pairs, limits, machine)


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.1f}"


def _describe(t: Dict[str, Any]) -> str:
    """One trial's timeline after T_hang, for the note."""
    text = (f"{t['variant']} job {t['job']}: frozen at step {t['step_at_hang']} {_fmt(t['hang_after_submit_s'])} s "
            f"after the submit, {_fmt(t['left_in_allocation_s'])} s left in the allocation; hang logged "
            f"{_fmt(t['hang_logged_s'])} s")
    if t["warning_s"] is not None:
        text += f", Slurm's time-limit warning {_fmt(t['warning_s'])} s"
    if not t["resumed"]:
        return (f"{text}, job ended {t['job_state']} {_fmt(t['ended_s'])} s, not requeued (attempt record: "
                f"{t['attempt_reason'] or 'none'}); a manual resume would start from step {t['resumed_step']}")
    return (f"{text}, attempt ended {_fmt(t['ended_s'])} s ({t['attempt_reason']}/{t['attempt_cause']}, "
            f"{t['action']}), job running again {_fmt(t['to_restart_s'])} s, 'resumed from step {t['resumed_step']}' "
            f"logged {_fmt(t['to_resumed_log_s'])} s, first step ({t['first_step_after']}) {_fmt(t['resume_s'])} s")


def _rows(pairs: List[Dict[str, Dict[str, Any]]], limits: str, machine: str) -> List[Dict[str, Any]]:
    ours, base = [p["ours"] for p in pairs], [p["baseline"] for p in pairs]
    # the baseline's cost: to its first step after a requeue, or, when nothing requeued it, to the end of the job
    # (a lower bound: it resumes only when someone resubmits it)
    base_cost = [t["resume_s"] if t["resumed"] else t["ended_s"] for t in base]
    not_resumed = sum(not t["resumed"] for t in base)
    res_o, res_b = summarize([t["resume_s"] for t in ours]), summarize(base_cost)
    end_o, end_b = summarize([t["ended_s"] for t in ours]), summarize([t["ended_s"] for t in base])
    lost_o, lost_b = summarize([t["steps_lost"] for t in ours]), summarize([t["steps_lost"] for t in base])
    limit = max(t["watchdog_limit_s"] or WATCHDOG["step_s_min"] for t in ours)
    baseline = (f"no hang detection, hang until the time limit"
                f"{' (job ended, not requeued: to its end)' if not_resumed else ''}, same run")
    jobs = "; ".join(f"ours job {p['ours']['job']}, baseline job {p['baseline']['job']}" for p in pairs)
    per = " | ".join(_describe(t) for t in ours + base)
    note = (f"tiny 2-node job (partition {PARTITION}, checkpoint_steps={CHECKPOINT_STEPS}), every trainer frozen "
            f"(ptrace-stop) at step >= {HANG_STEP}; both variants submitted together. Limits: {limits}. {jobs}. "
            f"{machine}")
    raw = [{v: {k: (round(x, 3) if isinstance(x, float) else x) for k, x in t.items()} for v, t in p.items()}
           for p in pairs]
    return [
        make_row("hang: seconds from hang to training resumed", res_o["median"], "s", baseline=baseline,
                 baseline_value=res_b["median"], higher_is_better=False,
                 goal=f"< watchdog limit + {RESUME_MARGIN_S:g} s ({limit + RESUME_MARGIN_S:g} s)",
                 goal_met=res_o["median"] < limit + RESUME_MARGIN_S, runs=res_o["runs"], spread=res_o["spread"],
                 baseline_runs=res_b["runs"], baseline_spread=res_b["spread"], baseline_not_resumed=not_resumed,
                 trials=raw,
                 note=f"T_hang (every trainer frozen) -> first loss-log line of the requeued attempt (seen within "
                      f"{POLL_S} s). Baseline: the same to its first step after a requeue, or, in "
                      f"{not_resumed} of {len(base)} repeat(s) where the job ended at its time limit and nothing "
                      f"requeued it, to that end (a lower bound: it resumes when someone resubmits it). It is "
                      f"mostly the time left in the allocation at the hang: with a 24 h limit, hours. After "
                      f"T_hang: {per}. {note}"),
        make_row("hang: seconds from hang to attempt ended", end_o["median"], "s",
                 baseline="no hang detection: the time limit ends it, same run", baseline_value=end_b["median"],
                 higher_is_better=False,
                 goal=f"<= watchdog limit + {ENDED_MARGIN_S:g} s ({limit + ENDED_MARGIN_S:g} s)",
                 goal_met=end_o["median"] <= limit + ENDED_MARGIN_S, runs=end_o["runs"], spread=end_o["spread"],
                 baseline_runs=end_b["runs"], baseline_spread=end_b["spread"],
                 note=f"T_hang -> `ended` of the attempt's attempts.jsonl record (baseline without one: the job's "
                      f"end in sacct). Ours: the watchdog's {limit:g} s training limit and its poll, the stack dump "
                      f"(a frozen trainer never answers: 5 s), then SIGTERM, which a frozen trainer ignores, until "
                      f"paddle's launcher or the launcher's SIGKILL ends it. Baseline: the time limit, Slurm's "
                      f"KillWait"),
        make_row("hang: training steps lost", lost_o["median"], "steps",
                 baseline="no hang detection, same run", baseline_value=lost_b["median"], higher_is_better=False,
                 runs=lost_o["runs"], spread=lost_o["spread"], baseline_runs=lost_b["runs"],
                 baseline_spread=lost_b["spread"],
                 note=f"last step logged before the hang minus the step training resumed from (the requeued "
                      f"attempt's workerlog; without a requeue, the newest complete checkpoint a resubmit would "
                      f"take): both lose the steps since the last checkpoint (every {CHECKPOINT_STEPS} steps), so a "
                      f"hang costs the wall time above, not steps"),
    ]


if __name__ == "__main__":
    raise SystemExit(module_main(run, name="bench_hang"))
