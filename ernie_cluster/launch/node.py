"""The per-node launcher: runs once per node (srun --ntasks-per-node=1, or submitit), or locally.

    python -m ernie_cluster.launch --run-dir RUN [--local]
    NodeLauncher(run_dir)()            # picklable; what submitit runs on every node

One attempt on one node:
 1. install signal handlers (USR1, USR2, TERM, INT: they only record the signal);
 2. work out who this node is (`cluster_env`), print the wiring summary;
 3. node 0: take the run's lock (`RUN/train.lock`, flock, non-blocking) and prepare the data
    (`prepare.run_preparation`); other nodes wait for node 0's READY marker;
 4. start `python -m paddle.distributed.launch ...` (`command.build_launch_command`) in its own
    session with USR1/USR2 ignored (paddle's launcher has no handler for them and would die), with
    `ERNIE_CLUSTER_CONTROL_DIR` = RUN/logs/attempt-<job>-<restart>/node<k>/control;
 5. on a stop signal, send SIGUSR2 ("save at the next step boundary and stop") to every live
    trainer pid in the control directory (trainers are in their own sessions: signals to the paddle
    launcher never reach them); if they are not done after a grace period, SIGTERM the launcher,
    then SIGKILL what is left;
 6. if the paddle launcher exits while trainers still run (it died: no outside signal), ask them
    to save and stop the same way, and record the attempt as `launcher-died`, not as a signal;
 7. classify the attempt from the trainers' exit records, write node_result.json; node 0 also
    combines all nodes, decides the cause (timeout vs preemption from the time left when the signal
    came; see `attempt`), applies the requeue policy, runs `scontrol requeue` when allowed, and
    appends the attempt to RUN/attempts.jsonl.

Exit codes (also `LaunchResult.exit_code`): 0 completed, 1 failed, 2 bad environment or spec,
3 run directory locked by another live run, 4 data preparation failed, 5 stopped but the requeue
policy denied a requeue, 75 stopped cleanly (requeue requested on Slurm; restartable locally).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, IO, List, Optional, Sequence

from ..rundir import RunDir, write_atomic
from ..spec import JobSpec, load_frozen
from . import attempt as att
from .cluster_env import ClusterEnvError, ClusterEnvironment, detect_environment, node_address
from .command import TRAIN_MODULE, CommandError, build_launch_command
from ..envvars import child_pythonpath, launcher_environment
from .exchange import (ATTEMPT_DECISION, HANDLED_SIGNALS, NODE_RESULT, collect_peers, failed_peer, slurm_command,
                       wait_for_decision, write_decision, write_node_result)
from .exchange import ignore_all_stop_signals as _ignore_all_stop_signals
from .lock import acquire_run_lock, release_run_lock
from .prepare import DataPrepError, marker, prepare_data, run_preparation, wait_for_data
from .results import AttemptFailed, LaunchResult
from .supervise import STOP_SIGNAL, Supervisor, stop_grace
from .supervise import env_float as _env_float
from .supervise import ignore_stop_signals as _ignore_stop_signals

CONTROL_DIR_ENV = "ERNIE_CLUSTER_CONTROL_DIR"
TRAIN_MODULE_ENV = "ERNIE_CLUSTER_TRAIN_MODULE"  # test hook: run another module in place of ernie_cluster.train
STOP_REQUESTED_ENV = "ERNIE_CLUSTER_STOP_REQUESTED"  # set by train.sbatch when the warning came before srun

__all__ = ["ATTEMPT_DECISION", "AttemptFailed", "CONTROL_DIR_ENV", "HANDLED_SIGNALS", "LaunchResult", "NODE_RESULT",
           "NodeLauncher", "STOP_REQUESTED_ENV", "STOP_SIGNAL", "TRAIN_MODULE_ENV", "main"]


class NodeLauncher:
    """One attempt on one node. Picklable (plain attributes only): submitit calls it once per node."""

    def __init__(
        self,
        run_dir: str,
        *,
        local: Optional[bool] = None,
        python: Optional[str] = None,
        launcher_argv: Optional[Sequence[str]] = None,
        train_module: Optional[str] = None,
        prepare: Optional[Callable[..., Any]] = None,
        env: Optional[Dict[str, str]] = None,
        stop_grace_s: Optional[float] = None,
        start_timeout_s: Optional[float] = None,
        data_timeout_s: Optional[float] = None,
        peer_wait_s: float = 60.0,
        kill_after_s: float = 45.0,
        poll_s: float = 0.2,
        timeout_margin_s: float = att.TIMEOUT_MARGIN_S,
    ):
        self.run_dir = str(run_dir)
        self.local = local
        self.python = python
        self.launcher_argv = list(launcher_argv) if launcher_argv is not None else None  # tests: a stand-in
        self.train_module = train_module  # None: $ERNIE_CLUSTER_TRAIN_MODULE (test hook) or ernie_cluster.train
        self.prepare = prepare
        self.env = dict(env) if env is not None else None
        self.stop_grace_s = stop_grace_s
        self.start_timeout_s = start_timeout_s
        self.data_timeout_s = data_timeout_s
        self.peer_wait_s = peer_wait_s
        self.kill_after_s = kill_after_s
        self.poll_s = poll_s
        self.timeout_margin_s = timeout_margin_s
        self._reset()

    def _reset(self) -> None:
        self._signals: List[tuple] = []
        self._lock_handle: Optional[IO[str]] = None
        self._logfile: Optional[Path] = None
        self._prefix = "[ernie_cluster.launch]"
        self._remaining_at_signal: Optional[float] = None
        self._preempted_at_signal: Optional[bool] = None
        self._start_failed: Optional[str] = None
        self._peer_failed: Optional[str] = None
        self._orphaned: Optional[List[int]] = None  # ranks still running when the paddle launcher exited
        self._stopped_itself = False  # this launcher signalled the trainers with no outside signal
        self._alive_until: Dict[int, float] = {}  # rank -> when its trainer was last seen running
        self._on_slurm = False

    def __getstate__(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # ------------------------------------------------------------------ entry points

    def __call__(self) -> Dict[str, Any]:
        """submitit / local supervisor entry. Slurm: returns on completion, SystemExit(75) after a
        requeue request (submitit must not write a 'done' result), AttemptFailed otherwise.
        Local: always returns the result as a dict."""
        # Keep our flag-only handlers until the process ends: a late USR2 must not reach submitit's
        # handler (it would write an error result for a job that is being requeued).
        result = self.run(restore_signals=False)
        on_slurm = self._on_slurm
        if not on_slurm or result.reason == "completed":
            return result.to_dict()
        if result.reason == "stopped" and result.exit_code == att.EXIT_STOPPED:
            raise SystemExit(att.EXIT_STOPPED)
        raise AttemptFailed(result)

    def run(self, *, restore_signals: bool = True) -> LaunchResult:
        """Run one attempt on this node; never raises for expected outcomes."""
        self._reset()
        previous = self._install_signal_handlers()
        try:
            return self._run()
        finally:
            self._release_lock()
            for sig, handler in (previous.items() if restore_signals else ()):
                try:
                    signal.signal(sig, handler)
                except (TypeError, ValueError):
                    pass

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self._signals.append((signum, time.time()))  # only record; the main loop acts

    def _install_signal_handlers(self) -> Dict[int, Any]:
        previous = {}
        for sig in HANDLED_SIGNALS:
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)  # replaces submitit's USR2/TERM handlers
        return previous

    # ------------------------------------------------------------------ logging

    def _log(self, message: str) -> None:
        line = f"{self._prefix} {message}"
        print(line, flush=True)
        if self._logfile is not None:
            try:
                with open(self._logfile, "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
            except OSError:
                pass

    # ------------------------------------------------------------------ lock

    def _acquire_lock(self, run: RunDir, cenv: ClusterEnvironment) -> Optional[str]:
        """Take RUN/train.lock; None on success, else who holds it. Writes nothing when it fails."""
        handle, holder = acquire_run_lock(run, cenv)
        if handle is not None:
            self._lock_handle = handle
        return holder

    def _release_lock(self) -> None:
        if self._lock_handle is not None:
            try:
                release_run_lock(self._lock_handle)  # closing releases the flock
            finally:
                self._lock_handle = None


    # ------------------------------------------------------------------ the attempt

    def _result(self, cenv: Optional[ClusterEnvironment], reason: str, code: int, message: str, **kw: Any) -> LaunchResult:
        return LaunchResult(reason=reason, exit_code=code, message=message,
                            job_id=cenv.job_id if cenv else None, restart=cenv.restart_count if cenv else None,
                            node_rank=cenv.node_rank if cenv else None, **kw)

    def _run(self) -> LaunchResult:
        env = dict(self.env if self.env is not None else os.environ)
        run = RunDir(Path(self.run_dir).resolve())
        try:
            spec = load_frozen(run.spec)
        except FileNotFoundError:
            self._log(f"ERROR: {run.spec} not found; is {run.root} a run directory made by `submit`?")
            return self._result(None, "failed", att.EXIT_CONFIG, f"{run.spec} not found")
        except Exception as exc:  # pydantic/YAML errors
            self._log(f"ERROR: cannot load {run.spec}: {exc}")
            return self._result(None, "failed", att.EXIT_CONFIG, f"cannot load {run.spec}: {exc}")
        local = self.local if self.local is not None else spec.cluster.backend == "local"
        try:
            cenv = detect_environment(env, local=local, master_port=spec.cluster.master_port)
        except ClusterEnvError as exc:
            self._log(f"ERROR: {exc}")
            return self._result(None, "failed", att.EXIT_CONFIG, str(exc))
        self._on_slurm = cenv.is_slurm
        self._prefix = f"[ernie_cluster.launch node {cenv.node_rank}/{cenv.num_nodes}]"
        started = time.time()
        early, _, attempt = env.get(STOP_REQUESTED_ENV, "").partition(":")
        if early:  # the batch shell was warned before srun started (during the setup lines)
            if attempt == f"{cenv.job_id}:{cenv.restart_count}":
                self._log(f"{STOP_REQUESTED_ENV}: the job was warned ({early}) before this launcher started")
                self._signals.insert(0, (getattr(signal, f"SIG{early}", STOP_SIGNAL), started))
            else:  # inherited from elsewhere (a user's shell, an earlier attempt): not for this attempt
                self._log(f"{STOP_REQUESTED_ENV}={early}:{attempt} is not for attempt {cenv.attempt}; ignored")

        # Node 0 owns the run directory for this attempt. Nothing is written before the lock is held.
        if cenv.node_rank == 0:
            holder = self._acquire_lock(run, cenv)
            if holder is not None:
                msg = (f"{run.root} is being trained by another live run (train.lock held by {holder}); "
                       f"refusing to start. Wait for it or cancel it.")
                self._log(f"ERROR: {msg}")
                if cenv.num_nodes > 1:  # let the other nodes of this job fail fast
                    write_atomic(marker(run, "FAILED", cenv.attempt), json.dumps({"error": msg}) + "\n")
                return self._result(cenv, "failed", att.EXIT_LOCKED, msg)
            if cenv.is_slurm:
                run.register_job("train", str(cenv.job_id), name=spec.name)

        node_dir = run.attempt_log_dir(cenv.job_id, cenv.restart_count, cenv.node_rank)
        control = node_dir / "control"
        node_dir.mkdir(parents=True, exist_ok=True)
        if control.exists() and any(control.iterdir()):  # same attempt run twice: keep the old files
            control.rename(node_dir / f"control.stale-{int(time.time())}")
        control.mkdir(parents=True, exist_ok=True)
        stale_result = node_dir / NODE_RESULT
        if stale_result.exists():
            stale_result.rename(node_dir / f"{NODE_RESULT}.stale-{int(time.time())}")
        self._logfile = node_dir / "launcher.log"

        if cenv.is_slurm and cenv.node_rank == 0 and cenv.end_time is None:
            cenv.refresh_end_time()

        # The command line for this node.
        host = None
        if cenv.num_nodes > 1:
            host = cenv.main_address if cenv.node_rank == 0 else node_address(cenv.node_name, env)
            if host and host.startswith("127.") and not cenv.main_address.startswith("127."):
                self._log(f"WARNING: {cenv.node_name} resolves to {host} (loopback) here; other nodes cannot reach it")
        try:
            argv = build_launch_command(spec, run, cenv, python=self.python or sys.executable,
                                        visible_devices=env.get("CUDA_VISIBLE_DEVICES"), host=host,
                                        train_module=self.train_module or env.get(TRAIN_MODULE_ENV) or TRAIN_MODULE)
        except CommandError as exc:
            self._log(f"ERROR: {exc}")
            return self._finish(spec, run, cenv, att.NodeOutcome("failed", None, str(exc), cause="error"), started,
                                None, node_dir)

        self._log(f"{cenv.describe()} port={cenv.main_port} trainers_per_node={spec.resources.trainers_per_node} "
                  f"device={spec.train.device} host={socket.gethostname()} pid={os.getpid()}")
        self._log(f"node_list={','.join(cenv.node_list[:8])}{',...' if cenv.num_nodes > 8 else ''} "
                  f"log_dir={node_dir}")
        self._log(f"control_dir={control}")
        self._log("argv: " + " ".join(argv))
        if self.launcher_argv is not None:
            argv = list(self.launcher_argv)
            self._log("stand-in launcher instead: " + " ".join(argv))

        # Data: node 0 prepares, the others wait for it.
        try:
            if cenv.node_rank == 0:
                run_preparation(spec, run, cenv.attempt, prepare=self.prepare or prepare_data, log=self._log,
                                should_abort=lambda: "stop signal" if self._signals else None)
            else:
                wait_for_data(run, cenv.attempt, log=self._log,
                              timeout_s=self.data_timeout_s or _env_float(env, "ERNIE_CLUSTER_DATA_TIMEOUT_S", 6 * 3600.0),
                              should_abort=lambda: "stop signal" if self._signals else None)
        except DataPrepError as exc:
            self._log(f"ERROR: data preparation: {exc}")
            if self._signals:
                outcome = att.NodeOutcome("stopped", None, f"stopped before training started: {exc}")
                return self._finish(spec, run, cenv, outcome, started, None, node_dir)
            outcome = att.NodeOutcome("failed", None, f"data preparation failed: {exc}", cause="data")
            result = self._finish(spec, run, cenv, outcome, started, None, node_dir)
            result.exit_code = att.EXIT_DATA
            return result

        if self._signals:
            outcome = att.NodeOutcome("stopped", None, "stop signal before training started")
            return self._finish(spec, run, cenv, outcome, started, None, node_dir)

        child_env, secrets, overrides = launcher_environment(env)
        if secrets:
            self._log(f"not passed to paddle.distributed.launch, which writes its environment into the logs: "
                      f"{', '.join(secrets)}")
        if overrides:
            self._log(f"removed, since paddle.distributed.launch would let them override its flags: {', '.join(overrides)}")
        child_env.update({
            CONTROL_DIR_ENV: str(control),
            "ERNIE_CLUSTER_RUN_DIR": str(run.root),
            "ERNIE_CLUSTER_JOB_ID": cenv.job_id,
            "ERNIE_CLUSTER_RESTART_COUNT": str(cenv.restart_count),
            "ERNIE_CLUSTER_NODE_RANK": str(cenv.node_rank),
            "ERNIE_CLUSTER_NUM_NODES": str(cenv.num_nodes),
            "ERNIE_CLUSTER_ATTEMPT": cenv.attempt,
            "ERNIE_CLUSTER_TRAIN_LOCK_HELD": str(run.train_lock),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": child_pythonpath(env),  # the checkout first only when running from one
        })
        rc, note = self._supervise(argv, child_env, control, cenv, spec)
        outcome = att.classify_node(att.read_control_dir(control), spec.resources.trainers_per_node, rc,
                                    stop_requested=bool(self._signals), note=note, alive_until=self._alive_until)
        if outcome.reason == "failed" and cenv.num_nodes > 1 and not (self._peer_failed or self._start_failed):
            # another node failed first (it published its result before this one): this node only followed
            failed_peer = self._failed_peer(control.parent.parent, cenv)
            if failed_peer:
                self._peer_failed = f"node {failed_peer[0]} failed first: {failed_peer[1]}"
        if self._start_failed:  # whatever the trainers wrote when they were stopped: this attempt never trained
            outcome = att.NodeOutcome("failed", outcome.step, self._start_failed, retryable=True, cause="hung")
        elif self._peer_failed and outcome.reason == "failed":  # a consequence, not a cause of its own
            outcome.cause, outcome.message = "peer-failed", f"{self._peer_failed}; {outcome.message}"
        elif self._orphaned is not None:
            outcome = self._after_launcher_death(outcome, rc)
        elif outcome.cause == "start-failed" and self._signals:
            # the warning came while paddle was still starting (rendezvous): nothing to save, nothing lost
            outcome = att.NodeOutcome("stopped", None, f"stop signal before any trainer started (launcher exit "
                                                       f"code {rc})")
        return self._finish(spec, run, cenv, outcome, started, rc, node_dir)

    def _after_launcher_death(self, outcome: att.NodeOutcome, rc: Optional[int]) -> att.NodeOutcome:
        """The paddle launcher exited while trainers ran, before any stop signal: it died (killed, OOM, a
        bug of its own). A trainer that had failed already is the cause instead (paddle exits after one)."""
        died = f"paddle.distributed.launch exited (code {rc}) while trainer ranks {self._orphaned} still ran"
        if outcome.reason == "stopped":
            outcome.cause = "launcher-died"
            outcome.message = f"{died}; they saved at step {outcome.step} and stopped: no step lost"
        elif outcome.cause == "trainer-died" and set(outcome.ranks) <= set(self._orphaned):
            # they could not stop cleanly once it was gone
            outcome.cause, outcome.message = "launcher-died", f"{died}; {outcome.message}"
        return outcome

    def _outside_signal(self, outcome: att.NodeOutcome) -> att.NodeOutcome:
        """`signal` names only a signal from outside: never the USR2/TERM this launcher sent on its own."""
        if self._signals:
            outcome.signal = self._first_signal()
        elif self._stopped_itself:
            outcome.signal = None
        return outcome

    # ------------------------------------------------------------------ supervising the paddle launcher

    def _grace(self, env: Dict[str, str], spec: JobSpec, remaining: Optional[float], local: bool) -> float:
        return stop_grace(self.stop_grace_s, env, spec, remaining, local)

    def _supervise(self, argv: List[str], child_env: Dict[str, str], control: Path,
                   cenv: ClusterEnvironment, spec: JobSpec) -> tuple:
        return Supervisor(self, argv, child_env, control, cenv, spec).run()

    def _failed_peer(self, attempt_dir: Path, cenv: ClusterEnvironment) -> Optional[tuple]:
        return failed_peer(attempt_dir, cenv)


    # ------------------------------------------------------------------ after the attempt

    def _first_signal(self) -> Optional[str]:
        return signal.Signals(self._signals[0][0]).name if self._signals else None

    def _finish(self, spec: JobSpec, run: RunDir, cenv: ClusterEnvironment, outcome: att.NodeOutcome,
                started: float, rc: Optional[int], node_dir: Path) -> LaunchResult:
        outcome = self._outside_signal(outcome)
        own = dict(outcome.to_dict(), launcher_exit_code=rc, node=cenv.node_name, time=time.time())
        write_node_result(node_dir, own)
        self._log(f"node outcome: {outcome.reason} at step {outcome.step}: {outcome.message}")
        if cenv.node_rank != 0:
            code = {"completed": att.EXIT_OK, "stopped": att.EXIT_STOPPED}.get(outcome.reason, att.EXIT_FAILED)
            result = self._result(cenv, outcome.reason, code, outcome.message, step=outcome.step,
                                  cause=outcome.cause, signal=outcome.signal, log_dir=str(node_dir))
            if outcome.reason != "failed":
                # Adopt node 0's verdict, so every task of the job step exits with the same status
                # (srun reports the highest one).
                decision = self._wait_for_decision(node_dir.parent)
                if decision is not None:
                    result.reason = decision.get("reason", result.reason)
                    result.exit_code = int(decision.get("exit_code_node", result.exit_code))
                    result.cause, result.action = decision.get("cause"), decision.get("action", "none")
                    result.message = decision.get("message", result.message)
            return result

        outcomes = {0: outcome}
        if cenv.num_nodes > 1:
            outcomes.update(self._collect_peers(run, cenv, spec))
        total = att.combine_nodes(outcomes)

        cause = total.cause  # a failure's, or launcher-died; else decided from the outside signal below
        remaining = self._remaining_at_signal
        cancel = run.read_state().get("cancel_requested") or {}
        cancelled = str(cancel.get("job_id")) == cenv.job_id
        if total.reason == "stopped" and cause is None:
            if cancelled:
                cause = "cancelled"
            elif cenv.is_slurm:
                preempted = self._preempted_at_signal
                if remaining is None:
                    when = self._signals[0][1] if self._signals else (total.stopped_at or time.time())
                    end = cenv.refresh_end_time()
                    remaining = None if end is None else end - when
                if preempted is None:
                    preempted = cenv.query_preempted()
                cause = att.stop_cause(remaining, spec.cluster.requeue.signal_lead_s, self.timeout_margin_s,
                                       preempted=preempted)
            else:
                cause = "signal"
        decision = att.decide_requeue(total.reason, cause, cenv.restart_count, spec.cluster.requeue,
                                      run.read_attempts(), cenv.job_id, retryable=total.retryable)
        if cancelled and (decision.requeue or cause == "cancelled"):
            decision = att.RequeueDecision(False, "none", "cancelled by `python -m ernie_cluster cancel`")
        action, message = decision.action, total.message
        if decision.why:
            message = f"{message}; {decision.why}"
        if not decision.requeue and (action == "requeue-denied" or (total.reason == "failed" and decision.why
                                                                      and not cancelled)):
            saved = f"its checkpoint (step {total.step})" if total.reason == "stopped" and total.step is not None \
                else "the last checkpoint"
            message = f"{message}; continue from {saved} with `python -m ernie_cluster submit {run.spec} --resume`"
        if total.reason == "stopped":
            left = "" if not cenv.is_slurm or cause == "launcher-died" else \
                f"; time left at the signal: {'unknown' if remaining is None else f'{remaining:.0f}s'}"
            self._log(f"attempt stopped ({cause}{left}): {decision.action} - {decision.why}")
        elif total.reason == "failed" and decision.why:
            self._log(f"attempt failed ({cause}, {'may be transient' if total.retryable else 'not retried'}): "
                      f"{decision.action} - {decision.why}")
        record = {
            "job_id": cenv.job_id, "restart": cenv.restart_count, "node": cenv.node_name, "nodes": cenv.num_nodes,
            "reason": total.reason, "cause": cause, "ranks": total.ranks, "step": total.step,
            "signal": total.signal, "started": started, "ended": time.time(),
            "exit_code": rc, "action": action, "message": message,
            "remaining_s": None if remaining is None else round(remaining, 1),
            "backend": "slurm" if cenv.is_slurm else "local",
        }

        def publish() -> int:
            # Before `scontrol requeue`: the requeue SIGTERMs this job's processes, srun kills its tasks.
            run.record_attempt(record)
            exit_code = att.exit_code_for(total.reason, record["action"])
            write_decision(node_dir.parent, dict(record, exit_code_node=exit_code))
            return exit_code

        code = publish()
        if decision.requeue and cenv.is_slurm:
            ok, detail = self._scontrol_requeue(cenv)
            if ok:
                self._log(f"requeued job {cenv.job_id} (scontrol requeue)")
            else:
                record.update(action="requeue-failed", message=f"{message}; scontrol requeue failed: {detail}")
                code = publish()  # replaces the record above (read_attempts keeps the last per attempt)
                self._log(f"scontrol requeue {cenv.job_id} failed ({detail}); if Slurm is requeuing the job "
                          f"itself (preemption with PreemptMode=REQUEUE) this is expected")
        if cause == "cancelled" and cenv.is_slurm:  # end the job as CANCELLED, not as a failed exit status
            ok, detail = self._slurm_command(cenv, "scancel", cenv.job_id)
            self._log(f"scancel {cenv.job_id}: {'done' if ok else detail}")
        action, message = record["action"], record["message"]
        self._log(f"attempt {cenv.attempt}: {total.reason}{' (' + cause + ')' if cause else ''}, step {total.step}, "
                  f"action {action}, exit code {code}")
        return self._result(cenv, total.reason, code, message, step=total.step, cause=cause, action=action,
                            signal=record["signal"], log_dir=str(node_dir))

    def _wait_for_decision(self, attempt_dir: Path) -> Optional[Dict[str, Any]]:
        return wait_for_decision(attempt_dir, self.peer_wait_s, self._log)

    def _collect_peers(self, run: RunDir, cenv: ClusterEnvironment, spec: JobSpec) -> Dict[int, att.NodeOutcome]:
        """Wait (bounded) for the other nodes' results; classify a silent node from its control dir."""
        return collect_peers(run, cenv, spec, self.peer_wait_s, self._log)

    def _scontrol_requeue(self, cenv: ClusterEnvironment) -> tuple:
        return self._slurm_command(cenv, "scontrol", "requeue", cenv.job_id)

    def _slurm_command(self, cenv: ClusterEnvironment, program: str, *args: str) -> tuple:
        return slurm_command(cenv, program, *args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ernie_cluster.launch",
                                     description="Run one training attempt on this node (once per node).")
    parser.add_argument("--run-dir", required=True, help="the run directory (holds spec.yaml)")
    parser.add_argument("--local", action="store_true", help="no Slurm: one node, this machine")
    parser.add_argument("--train-module", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    launcher = NodeLauncher(args.run_dir, local=True if args.local else None, train_module=args.train_module)
    result = launcher.run()
    return result.exit_code
