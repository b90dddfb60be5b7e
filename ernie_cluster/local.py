"""The local backend: the same chain as on Slurm, run on this machine by a small supervisor.

It plays Slurm's part: starts the node launcher (attempt 0), optionally sends the preemption warning
once (`--preempt-after`, seconds after training started), restarts a stopped attempt, or a failed one
the launcher marked for requeue, like `scontrol requeue` would (same `cluster.requeue` caps), then
runs the conversion only if training completed (afterok). Its progress goes into state.json
(`local_state`, `restarts`); `cancel` TERMs it. Every attempt and the conversion import the run's
frozen code (`submit` froze it), like the jobs on Slurm.

What Slurm would write into the job's output file goes into `logs/local<pid>.out` (`output_file`): the
supervisor's own lines, everything the node launchers, paddle's launcher and the conversion print. The
terminal shows the console (`console`) instead, which reads the run directory; `submit --verbose` streams
that file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import IO, Any, Dict, Optional, Tuple

from .frozen_paths import code_environment
from .launch.cluster_env import LOCAL_JOB_ID_ENV, LOCAL_RESTART_ENV
from .rundir import AttemptRecord, RunDir
from .spec import JobSpec


def output_file(run: RunDir, job_id: str) -> Path:
    """The local job's output (Slurm's job output file on the Slurm backend), appended by every attempt."""
    return run.logs / f"{job_id}.out"


class LocalSupervisor:
    def __init__(self, spec: JobSpec, run: RunDir, *, python: str, preempt_after_s: Optional[float] = None):
        self.spec = spec
        self.rundir = run
        self.python = python
        self.preempt_after_s = preempt_after_s
        self.job_id = f"local{os.getpid()}"
        self._child: Optional[subprocess.Popen] = None
        self._cancelled = False
        self._out: Optional[IO[Any]] = None  # output_file, open while run() runs
        self._out_lock = threading.Lock()  # the preemption thread logs too

    def _environment(self, **extra: str) -> Dict[str, str]:
        """This process's environment with the run's frozen code first on the path (frozen_paths)."""
        env = dict(os.environ)
        env.update(extra)
        env.update(code_environment(self.rundir.root, env))
        return env

    def _log(self, message: str) -> None:
        line = f"[ernie_cluster local] {message}\n"
        with self._out_lock:
            if self._out is None:
                print(line, end="", flush=True)
            else:
                self._out.write(line)
                self._out.flush()

    def _open_output(self) -> None:
        """Append mode, like Slurm's output of a requeued job; the children write into the same open file."""
        path = output_file(self.rundir, self.job_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._out = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by run()
        except OSError as exc:  # nothing silent: the output stays on the terminal then
            self._log(f"WARNING: cannot write {path} ({exc.strerror}); the jobs' output goes to the terminal")

    def _output(self) -> Dict[str, Any]:
        """Popen's stdout/stderr for a child: the output file when it is open, else this process's."""
        return {"stdout": self._out, "stderr": subprocess.STDOUT} if self._out is not None else {}

    def _on_cancel(self, signum, _frame) -> None:
        # `cancel` sends TERM: pass it on as a stop so the trainers checkpoint, and do not requeue.
        self._cancelled = True
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signal.SIGTERM)

    def _attempt(self, restart: int) -> Tuple[AttemptRecord, int]:
        """Run one attempt: (what the node launcher recorded, its exit status)."""
        env = self._environment(**{LOCAL_JOB_ID_ENV: self.job_id, LOCAL_RESTART_ENV: str(restart)})
        cmd = [self.python, "-m", "ernie_cluster.launch", "--run-dir", str(self.rundir.root), "--local"]
        before = len(self.rundir.read_attempts())
        self._log(f"attempt {restart}: {' '.join(cmd)}")
        self._child = subprocess.Popen(cmd, env=env, **self._output())
        done = threading.Event()
        warner = None
        if self.preempt_after_s is not None and restart == 0:
            warner = threading.Thread(target=self._warn_once, args=(restart, done), daemon=True)
            warner.start()
        code = self._child.wait()
        if warner is not None:
            done.set()
            warner.join()
        attempts = self.rundir.read_attempts()[before:]
        if not attempts:
            self._log(f"ERROR: attempt {restart}: the launcher recorded no attempt (exit {code}); its output is in "
                      f"{output_file(self.rundir, self.job_id)}")
        return (attempts[-1] if attempts else AttemptRecord(reason="failed")), code

    def _warn_once(self, restart: int, done: threading.Event) -> None:
        """The simulated preemption: the requeue signal, `preempt_after_s` after training started.

        Counted from training start, not from submit: tokenizing and start-up take a machine-dependent
        time, and a warning after the last step would demonstrate nothing."""
        ready = self.rundir.attempt_log_dir(self.job_id, restart, 0) / "control" / "ready.0"
        while not ready.exists():
            if done.wait(0.2):
                return
        if done.wait(self.preempt_after_s):
            return
        if self._child is not None and self._child.poll() is None:
            self._log(f"simulated preemption after {self.preempt_after_s:g}s of training: "
                      f"sending {self.spec.cluster.requeue.signal} to the job")
            self._child.send_signal(getattr(signal, f"SIG{self.spec.cluster.requeue.signal}"))

    def run_training(self) -> bool:
        policy = self.spec.cluster.requeue
        restart = 0
        while True:
            self.rundir.update_state(local_state="RUNNING", restarts=restart)
            record, code = self._attempt(restart)
            reason = record.get("reason")
            self._log(f"attempt {restart} ended: {reason} at step {record.get('step')} (exit {code})")
            if reason == "completed" and code == 0:
                return True
            allowed = record.get("action") != "requeue-denied" and policy.enabled and restart < policy.max_requeues
            retry = reason == "stopped" or (reason == "failed" and record.get("action") == "requeue")
            if retry and not self._cancelled and allowed:
                restart += 1
                self._log(f"requeued (restart {restart}/{policy.max_requeues})")
                continue
            if self._cancelled:
                self.rundir.update_state(local_state="CANCELLED")
            return False

    def run(self) -> bool:
        previous = signal.signal(signal.SIGTERM, self._on_cancel)
        self._open_output()
        try:
            trained = self.run_training()
            if not trained:
                if self.rundir.read_state().get("local_state") != "CANCELLED":
                    self.rundir.update_state(local_state="FAILED")
                self._log("training did not complete: the conversion does not run (afterok)")
                return False
            if not self.spec.convert.enabled:
                self.rundir.update_state(local_state="COMPLETED")
                return True
            self.rundir.update_state(local_state="CONVERTING")
            cmd = [self.python, "-m", "ernie_cluster.convert", "--run-dir", str(self.rundir.root)]
            self._log(f"conversion: {' '.join(cmd)}")
            code = subprocess.call(cmd, env=self._environment(), **self._output())
            self.rundir.update_state(local_state="COMPLETED" if code == 0 else "FAILED", convert_exit_code=code)
            if code == 0:
                self._log(f"converted model: {self.spec.convert_dir()}")
            return code == 0
        finally:
            signal.signal(signal.SIGTERM, previous)
            with self._out_lock:
                out, self._out = self._out, None
            if out is not None:
                out.close()
