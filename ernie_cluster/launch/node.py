"""The per-node launcher: runs once per node (srun --ntasks-per-node=1, or submitit), or locally.

    python -m ernie_cluster.launch --run-dir RUN [--local]   # __main__: NodeLauncher(RUN).run()
    NodeLauncher(run_dir)()            # picklable; what submitit runs on every node

One attempt on one node (`NodeLauncher._run`: one named step each):
 1. install signal handlers (USR1, USR2, TERM, INT: they only record the signal); a warning the batch
    shell got before srun started ($ERNIE_CLUSTER_STOP_REQUESTED, for this attempt) counts as one;
 2. `_begin`: load the frozen spec, work out who this node is (`cluster_env`);
 3. `_take_lock`: node 0 takes the run's lock (`lock`); nothing is written before it holds it;
 4. `_open_node_dir`: RUN/logs/attempt-<job>-<restart>/node<k>/ with an empty control/ (`exchange`); on
    node 0 of a requeued Slurm attempt, the previous attempt's record is checked against Slurm's word
    (`slurm_actions.reconcile_previous`: a dead node's NODE_FAIL, whose launchers were killed unrecorded);
 5. `_build_command`: `python -m paddle.distributed.launch ...` (`command`), the wiring in the log;
 6. `_preflight`: this node's pre-flight (`preflight`: the trainers' imports, GPUs, run directory, disk), its
    report in node<k>/preflight.json; a failure ends the attempt here, naming the node (`preflight-failed`);
 7. `_prepare_data`: node 0 prepares the data, the other nodes wait for its READY marker (`prepare`);
 8. `_supervise`: run paddle's launcher to its end, forwarding stop signals to the trainers by pid,
    stopping a start that hangs, a node whose peer failed, trainers whose launcher died (`supervise`);
 9. `_node_outcome`: classify this node from its trainers' exit records (`attempt.classify_node`) and
    what the launcher saw (a hang, a failed peer, a dead paddle launcher: `launcher-died`, not a signal);
10. `_finish`: write node_result.json. Node 0 combines all nodes and concludes the attempt
    (`attempt.decide_attempt`: the cause, timeout vs preemption from the time left when the signal came,
    the requeue policy, the exit code), names the nodes at fault (`node_faults`: a node Slurm says died
    while it was silent, a failed pre-flight, a hang or crash on some nodes only), appends the record to
    RUN/attempts.jsonl, publishes the verdict for the other nodes, then runs `scontrol requeue` when
    allowed, leaving the nodes at fault out of the requeued job (`slurm_actions`), or `scancel` after
    `cancel`. The other nodes adopt node 0's verdict unless they failed themselves.

Exit codes (also `LaunchResult.exit_code`): 0 completed, 1 failed (not requeued), 2 bad environment or
spec, 3 run directory locked by another live run, 4 data preparation failed, 5 stopped but the requeue
policy denied a requeue, 75 requeue requested: stopped cleanly, or a failure that may be transient
retried under cluster.requeue.max_failure_requeues (on Slurm after `scontrol requeue`, even a failed
one; locally the supervisor may restart it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, IO, List, Optional, Sequence, Tuple, Union

from ..frozen_code import attempt_code_problem
from ..rundir import RunDir, write_atomic
from ..spec import JobSpec, load_frozen
from . import attempt as att
from . import preflight as pf
from . import slurm_actions
from .cluster_env import ClusterEnvError, ClusterEnvironment, detect_environment, node_address
from .command import TRAIN_MODULE, CommandError, attempt_plan, build_launch_command, launch_environment
from .conclude import conclude
from .exchange import HANDLED_SIGNALS, failed_peer, open_node_dir, slurm_command, wait_for_decision, write_node_result
from .lock import acquire_run_lock, release_run_lock
from .prepare import DataPrepError, marker, prepare_data, run_preparation, wait_for_data
from .results import AttemptFailed, LaunchResult
from .supervise import STOP_SIGNAL, Supervisor, env_float

TRAIN_MODULE_ENV = "ERNIE_CLUSTER_TRAIN_MODULE"  # test hook: run another module in place of ernie_cluster.train
STOP_REQUESTED_ENV = "ERNIE_CLUSTER_STOP_REQUESTED"  # set by train.sbatch when the warning came before srun

__all__ = ["AttemptFailed", "LaunchResult", "NodeLauncher", "STOP_REQUESTED_ENV", "TRAIN_MODULE_ENV"]


@dataclass
class _Attempt:
    """What the steps of one attempt on this node share."""

    env: Dict[str, str]
    run: RunDir
    spec: JobSpec
    cenv: ClusterEnvironment
    started: float
    node_dir: Path = Path()  # RUN/logs/attempt-<job>-<restart>/node<k> (`_open_node_dir`)

    @property
    def control(self) -> Path:
        return self.node_dir / "control"


class NodeLauncher:
    """One attempt on one node. Picklable (plain attributes only): submitit calls it once per node."""

    def __init__(self, run_dir: str, *, local: Optional[bool] = None, python: Optional[str] = None,
                 launcher_argv: Optional[Sequence[str]] = None, train_module: Optional[str] = None,
                 prepare: Optional[Callable[..., Any]] = None, env: Optional[Dict[str, str]] = None,
                 stop_grace_s: Optional[float] = None, start_timeout_s: Optional[float] = None,
                 data_timeout_s: Optional[float] = None, peer_wait_s: float = 60.0, kill_after_s: float = 45.0,
                 poll_s: float = 0.2, timeout_margin_s: float = att.TIMEOUT_MARGIN_S,
                 preflight: Optional[bool] = None):
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
        self.preflight = preflight  # None: unless $ERNIE_CLUSTER_PREFLIGHT=0 (stand-in launcher tests skip it)
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
        self._hung: Optional[att.NodeOutcome] = None  # the hang watchdog's verdict on this node (supervise)
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
        """submitit / local supervisor entry. Slurm: returns on completion, SystemExit(75) when the
        trainers stopped cleanly and a requeue was asked for (submitit must not write a 'done' result),
        AttemptFailed otherwise. Local: always returns the result as a dict."""
        # Keep our flag-only handlers until the process ends: a late USR2 must not reach submitit's
        # handler (it would write an error result for a job that is being requeued).
        result = self.run(restore_signals=False)
        if not self._on_slurm or result.reason == "completed":
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
            handle, self._lock_handle = self._lock_handle, None
            release_run_lock(handle)  # closing its file releases the flock
            for sig, handler in (previous.items() if restore_signals else ()):
                try:
                    signal.signal(sig, handler)
                except (TypeError, ValueError):
                    pass

    def _on_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self._signals.append((signum, time.time()))  # only record; the main loop acts

    def _install_signal_handlers(self) -> Dict[int, Any]:
        previous = {}
        for sig in HANDLED_SIGNALS:
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)  # replaces submitit's USR2/TERM handlers
        return previous

    def _log(self, message: str) -> None:
        line = f"{self._prefix} {message}"
        print(line, flush=True)
        if self._logfile is not None:
            try:
                with open(self._logfile, "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
            except OSError:
                pass

    def _result(self, cenv: Optional[ClusterEnvironment], reason: str, code: int, message: str, **kw: Any) -> LaunchResult:
        return LaunchResult(reason=reason, exit_code=code, message=message,
                            job_id=cenv.job_id if cenv else None, restart=cenv.restart_count if cenv else None,
                            node_rank=cenv.node_rank if cenv else None, **kw)

    # ------------------------------------------------------------------ the attempt

    def _run(self) -> LaunchResult:
        """One attempt, a named step each (the module's docstring says what each does)."""
        a = self._begin(dict(self.env if self.env is not None else os.environ))
        if isinstance(a, LaunchResult):  # no usable spec or cluster environment: nothing written
            return a
        refused = self._take_lock(a)
        if refused is not None:
            return refused
        self._open_node_dir(a)
        slurm_actions.reconcile_previous(a.run, a.cenv, self._log)  # node 0 of a requeued Slurm attempt only
        argv, ended = self._build_command(a)
        if ended is None:
            ended = self._preflight(a)
        if ended is None:
            ended = self._prepare_data(a)
        if ended is not None:  # the attempt ended before any trainer started
            result = self._finish(a, ended, None)
            if ended.cause == "data":
                result.exit_code = att.EXIT_DATA
            return result
        rc, note = self._supervise(a, argv)
        return self._finish(a, self._node_outcome(a, rc, note), rc)

    def _begin(self, env: Dict[str, str]) -> Union[_Attempt, LaunchResult]:
        """Load the frozen spec and work out who this node is; a failed result (exit 2) when either fails."""
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
        code_problem = attempt_code_problem(run.root)  # never train with code other than what was submitted
        if code_problem:
            self._log(f"ERROR: {code_problem}")
            return self._result(cenv, "failed", att.EXIT_CONFIG, code_problem)
        a = _Attempt(env, run, spec, cenv, started=time.time())
        self._early_stop_request(a)
        return a

    def _early_stop_request(self, a: _Attempt) -> None:
        """The batch shell was warned before srun started (during the setup lines): a stop signal for this attempt."""
        early, _, attempt = a.env.get(STOP_REQUESTED_ENV, "").partition(":")
        if not early:
            return
        if attempt == f"{a.cenv.job_id}:{a.cenv.restart_count}":
            self._log(f"{STOP_REQUESTED_ENV}: the job was warned ({early}) before this launcher started")
            self._signals.insert(0, (getattr(signal, f"SIG{early}", STOP_SIGNAL), a.started))
        else:  # inherited from elsewhere (a user's shell, an earlier attempt): not for this attempt
            self._log(f"{STOP_REQUESTED_ENV}={early}:{attempt} is not for attempt {a.cenv.attempt}; ignored")

    def _take_lock(self, a: _Attempt) -> Optional[LaunchResult]:
        """Node 0 owns the run directory for this attempt: nothing is written before it holds RUN/train.lock.
        A failed result (exit 3) when another live run holds it; nothing written then either."""
        run, cenv = a.run, a.cenv
        if cenv.node_rank != 0:
            return None
        self._lock_handle, holder = acquire_run_lock(run, cenv)
        if holder is not None:
            msg = (f"{run.root} is being trained by another live run (train.lock held by {holder}); "
                   f"refusing to start. Wait for it or cancel it.")
            self._log(f"ERROR: {msg}")
            if cenv.num_nodes > 1:  # let the other nodes of this job fail fast
                write_atomic(marker(run, "FAILED", cenv.attempt), json.dumps({"error": msg}) + "\n")
            return self._result(cenv, "failed", att.EXIT_LOCKED, msg)
        if cenv.is_slurm:
            run.register_job("train", str(cenv.job_id), name=a.spec.name)
        return None

    def _open_node_dir(self, a: _Attempt) -> None:
        """This node's log directory for the attempt (`exchange.open_node_dir`), and launcher.log in it."""
        a.node_dir = open_node_dir(a.run, a.cenv)
        self._logfile = a.node_dir / "launcher.log"
        if a.cenv.is_slurm and a.cenv.node_rank == 0 and a.cenv.end_time is None:
            a.cenv.refresh_end_time()

    def _build_command(self, a: _Attempt) -> Tuple[List[str], Optional[att.NodeOutcome]]:
        """The paddle launcher's command line for this node, logged with the wiring; when there is none, a
        failed outcome (cause `error`) instead."""
        spec, cenv, env = a.spec, a.cenv, a.env
        host = None
        if cenv.num_nodes > 1:
            host = cenv.main_address if cenv.node_rank == 0 else node_address(cenv.node_name, env)
            if host and host.startswith("127.") and not cenv.main_address.startswith("127."):
                self._log(f"WARNING: {cenv.node_name} resolves to {host} (loopback) here; other nodes cannot reach it")
        try:
            argv = build_launch_command(spec, a.run, cenv, python=self.python or sys.executable,
                                        visible_devices=env.get("CUDA_VISIBLE_DEVICES"), host=host,
                                        train_module=self.train_module or env.get(TRAIN_MODULE_ENV) or TRAIN_MODULE)
        except CommandError as exc:
            self._log(f"ERROR: {exc}")
            return [], att.NodeOutcome("failed", None, str(exc), cause="error")
        self._log(f"{cenv.describe()} port={cenv.main_port} trainers_per_node={spec.resources.trainers_per_node} "
                  f"device={spec.train.device} host={socket.gethostname()} pid={os.getpid()}; resources.nodes "
                  f"{spec.resources.nodes}: {attempt_plan(spec, cenv).describe()}")
        self._log(f"node_list={','.join(cenv.node_list[:8])}{',...' if cenv.num_nodes > 8 else ''} "
                  f"log_dir={a.node_dir} control_dir={a.control}")
        self._log("argv: " + " ".join(argv))
        if self.launcher_argv is not None:
            argv = list(self.launcher_argv)
            self._log("stand-in launcher instead: " + " ".join(argv))
        return argv, None

    def _preflight(self, a: _Attempt) -> Optional[att.NodeOutcome]:
        """This node's pre-flight in the trainers' interpreter and environment, its report in preflight.json.
        None to go on; else a failed outcome naming the node (cause `preflight-failed`; retryable when the
        failure is likely this machine's), and on node 0 a FAILED data marker, so the other nodes stop waiting."""
        enabled = self.preflight if self.preflight is not None else \
            a.env.get(pf.ENABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
        if not enabled:
            return None
        report = pf.preflight_for_spec(a.spec, a.run.root, python=self.python or sys.executable, host=a.cenv.node_name,
                                       env=launch_environment(a.env, a.control)[0],
                                       timeout_s=env_float(a.env, pf.TIMEOUT_ENV, pf.DEFAULT_TIMEOUT_S) or 1.0)
        injected = pf.injected_failure(a.env, a.cenv.node_name, a.cenv.node_rank)
        if injected is not None:
            report.checks.append(injected)
        pf.write_report(a.node_dir, report)
        for line in report.describe().splitlines():
            self._log(line)
        if report.ok:
            return None
        self._log(f"ERROR: {report.summary()}")
        if a.cenv.node_rank == 0 and a.cenv.num_nodes > 1:
            write_atomic(marker(a.run, "FAILED", a.cenv.attempt),
                         json.dumps({"error": report.summary(), "cause": "preflight-failed"}) + "\n")
        return att.NodeOutcome("failed", None, report.summary(), retryable=report.node_fault, cause="preflight-failed",
                               failed_at=time.time())

    def _prepare_data(self, a: _Attempt) -> Optional[att.NodeOutcome]:
        """Node 0 prepares the data, the other nodes wait for it. None to go on; else how the attempt ended:
        stopped (a stop signal came) or failed (cause `data`)."""
        def should_abort() -> Optional[str]:
            return "stop signal" if self._signals else None

        try:
            if a.cenv.node_rank == 0:
                run_preparation(a.spec, a.run, a.cenv.attempt, prepare=self.prepare or prepare_data, log=self._log,
                                should_abort=should_abort)
            else:
                timeout_s = self.data_timeout_s or env_float(a.env, "ERNIE_CLUSTER_DATA_TIMEOUT_S", 6 * 3600.0)
                wait_for_data(a.run, a.cenv.attempt, log=self._log, timeout_s=timeout_s, should_abort=should_abort)
        except DataPrepError as exc:
            self._log(f"ERROR: data preparation: {exc}")
            if self._signals:
                return att.NodeOutcome("stopped", None, f"stopped before training started: {exc}")
            followed = self._node0_preflight_failed(a)
            if followed:
                return att.NodeOutcome("failed", None, followed, retryable=True, cause="peer-failed")
            return att.NodeOutcome("failed", None, f"data preparation failed: {exc}", cause="data")
        if self._signals:
            return att.NodeOutcome("stopped", None, "stop signal before training started")
        return None

    def _node0_preflight_failed(self, a: _Attempt) -> Optional[str]:
        """Another node: what node 0's FAILED data marker says when its pre-flight failed; else None."""
        if a.cenv.node_rank == 0:
            return None
        try:
            data = json.loads(marker(a.run, "FAILED", a.cenv.attempt).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("cause") != "preflight-failed":
            return None
        return f"node 0 failed its pre-flight: {data.get('error')}"

    def _child_env(self, a: _Attempt) -> Dict[str, str]:
        child_env, secrets, overrides = launch_environment(a.env, a.control)
        if secrets:
            self._log(f"not passed to paddle.distributed.launch, which writes its environment into the logs: "
                      f"{', '.join(secrets)}")
        if overrides:
            self._log(f"removed, since paddle.distributed.launch would let them override its flags: {', '.join(overrides)}")
        return child_env

    def _supervise(self, a: _Attempt, argv: List[str]) -> Tuple[Optional[int], str]:
        """Run the paddle launcher to its end (`supervise.Supervisor`): (its exit code or None, a note)."""
        return Supervisor(self, argv, self._child_env(a), a.control, a.cenv, a.spec).run()

    def _node_outcome(self, a: _Attempt, rc: Optional[int], note: str) -> att.NodeOutcome:
        """This node's outcome: its trainers' exit records, read in the light of what the launcher saw."""
        outcome = att.classify_node(att.read_control_dir(a.control), a.spec.resources.trainers_per_node, rc,
                                    stop_requested=bool(self._signals), note=note, alive_until=self._alive_until)
        if outcome.reason == "failed" and a.cenv.num_nodes > 1 and not (self._peer_failed or self._start_failed):
            # another node failed first (it published its result before this one): this node only followed
            peer = failed_peer(a.node_dir.parent, a.cenv)
            if peer:
                self._peer_failed = f"node {peer[0]} failed first: {peer[1]}"
        if self._start_failed:  # whatever the trainers wrote when they were stopped: this attempt never trained
            outcome = att.NodeOutcome("failed", outcome.step, self._start_failed, retryable=True, cause="hung")
        elif self._hung:  # a rank here made no progress: whatever its trainers wrote once stopped
            if outcome.step is not None:
                self._hung.step = outcome.step
            outcome = self._hung
        elif self._peer_failed and outcome.reason == "failed" and not self._failed_first(a, outcome):
            # a consequence, not a cause of its own
            outcome.cause, outcome.message = "peer-failed", f"{self._peer_failed}; {outcome.message}"
        elif self._orphaned is not None:
            outcome = self._after_launcher_death(outcome, rc)
        elif outcome.cause == "start-failed" and self._signals:
            # the warning came while paddle was still starting (rendezvous): nothing to save, nothing lost
            outcome = att.NodeOutcome("stopped", None, f"stop signal before any trainer started (launcher exit "
                                                       f"code {rc})")
        return outcome

    def _failed_first(self, a: _Attempt, outcome: att.NodeOutcome) -> bool:
        """This node's trainers failed before those of the peer that failed first (their exit records' times):
        it is a cause, not a follower, even when the peer published its result first."""
        peer = failed_peer(a.node_dir.parent, a.cenv)
        return (outcome.failed_at is not None and peer is not None and peer[2] is not None
                and outcome.failed_at < peer[2])

    def _after_launcher_death(self, outcome: att.NodeOutcome, rc: Optional[int]) -> att.NodeOutcome:
        """The paddle launcher exited (code `rc`) while trainers ran, before any stop signal."""
        return att.after_launcher_death(outcome, rc, self._orphaned or [])

    # ------------------------------------------------------------------ after the attempt

    def _finish(self, a: _Attempt, outcome: att.NodeOutcome, rc: Optional[int]) -> LaunchResult:
        """Publish this node's outcome; node 0 concludes the attempt, the other nodes adopt its verdict."""
        if self._signals:  # `signal` names only a signal from outside, never one this launcher sent on its own
            outcome.signal = signal.Signals(self._signals[0][0]).name
        elif self._stopped_itself:
            outcome.signal = None
        write_node_result(a.node_dir, dict(outcome.to_dict(), launcher_exit_code=rc, node=a.cenv.node_name,
                                           time=time.time()))
        self._log(f"node outcome: {outcome.reason} at step {outcome.step}: {outcome.message}")
        if a.cenv.node_rank != 0:
            return self._follow_node0(a, outcome)
        return self._conclude(a, outcome, rc)

    def _follow_node0(self, a: _Attempt, outcome: att.NodeOutcome) -> LaunchResult:
        """A node other than 0: its own result when it failed, else node 0's verdict, so every task of the
        job step exits with the same status (srun reports the highest one)."""
        result = self._result(a.cenv, outcome.reason, att.exit_code_for(outcome.reason, "none"), outcome.message,
                              step=outcome.step, cause=outcome.cause, signal=outcome.signal, log_dir=str(a.node_dir))
        if outcome.reason == "failed":
            return result
        decision = wait_for_decision(a.node_dir.parent, self.peer_wait_s, self._log)
        if decision is not None:
            result.adopt(decision)
        return result

    def _conclude(self, a: _Attempt, outcome: att.NodeOutcome, rc: Optional[int]) -> LaunchResult:
        """Node 0: combine every node's outcome, decide, record and act on it (`conclude`)."""
        return conclude(self, a, outcome, rc)

    def _slurm_command(self, cenv: ClusterEnvironment, program: str, *args: str) -> Tuple[bool, str]:
        return slurm_command(cenv, program, *args)
