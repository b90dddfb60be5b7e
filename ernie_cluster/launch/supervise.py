"""Process supervision: run paddle's launcher, forward stop signals to the trainers, escalate, reap.

paddle.distributed.launch runs in its own session with USR1/USR2 ignored (it has no handler for them
and would die), with $ERNIE_CLUSTER_CONTROL_DIR naming the control directory the trainers register in.
- A stop signal (recorded by the node launcher): SIGUSR2 ("save at the next step boundary and stop")
  to every live trainer pid there; trainers are in their own sessions, so signals to the paddle
  launcher never reach them. Not done after a grace period (`stop_grace`): SIGTERM the launcher and
  the trainers, then SIGKILL what is left.
- Start watchdog: trainers neither past their first collective (`ready.<rank>`) nor beating (a heartbeat,
  which hands them to the hang watchdog) in time: SIGTERM the launcher and the trainers at once (SIGKILL
  later); the attempt is `hung`. The same when another node published a failure (this node then only
  followed it: `peer-failed`).
- Hang watchdog (`watchdog.Watchdog`, limits from cluster.watchdog): a rank of this node silent past its
  phase's limit: its node's trainers' Python stacks are recorded (stacks.rank<k>.txt), then the same
  SIGTERM/SIGKILL; the attempt is `hung` with this node and the ranks at fault (`NodeLauncher._hung`).
  Stragglers are logged, and every check leaves watchdog.json in the node's log directory for `status`.
- The paddle launcher exits while trainers still run, with no stop signal: it died. The trainers are
  asked to save and stop with SIGUSR2 (`launcher-died`), then TERMed and KILLed: none outlives it.
What happened is left on the `NodeLauncher` (`_start_failed`, `_hung`, `_peer_failed`, `_orphaned`, ...).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple

from ..procs import pid_alive, start_ticks
from ..spec import JobSpec
from ..train.heartbeat import heartbeat_dir
from . import attempt as att
from .cluster_env import ClusterEnvironment
from .exchange import failed_peer, write_node_result
from .watchdog import Limits, Watchdog, read_heartbeats

if TYPE_CHECKING:  # pragma: no cover
    from .node import NodeLauncher

STOP_SIGNAL = signal.SIGUSR2  # what trainers receive for every stop request


def ignore_stop_signals() -> None:  # runs in the child between fork and exec
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def env_float(env: Dict[str, str], name: str, default: Optional[float]) -> Optional[float]:
    value = env.get(name)
    if value in (None, ""):
        return default
    try:
        return float(value)
    except ValueError:
        return default


def stop_grace(configured_s: Optional[float], env: Dict[str, str], spec: JobSpec, remaining: Optional[float],
               local: bool) -> float:
    """How long the trainers get to save and stop after a stop signal before the launcher is TERMed."""
    configured = configured_s if configured_s is not None else env_float(env, "ERNIE_CLUSTER_STOP_GRACE_S", None)
    if configured is not None:
        return float(configured)
    if local:
        return 300.0
    # A safety net against hung trainers only: Slurm's own TERM/KILL end the allocation anyway,
    # so never cut a checkpoint short before that (at least 60 s).
    lead = spec.cluster.requeue.signal_lead_s
    if remaining is None:
        return max(60.0, lead - 10.0)
    return max(60.0, min(max(2.0 * lead, 300.0), remaining - 30.0))


HUNG_KILL_AFTER_S = 5.0  # TERM to SIGKILL once a rank is declared hung


class Supervisor:
    """One run of the paddle launcher; records what happened on the `NodeLauncher` it serves."""

    def __init__(self, launcher: "NodeLauncher", argv: List[str], child_env: Dict[str, str], control: Path,
                 cenv: ClusterEnvironment, spec: JobSpec):
        self.launcher = launcher
        self.argv = argv
        self.env = child_env
        self.control = control
        self.cenv = cenv
        self.spec = spec
        self.child: Optional["subprocess.Popen[bytes]"] = None
        self.child_ticks = 0
        self.signalled: Set[int] = set()
        self.handled = 0
        self.stop_at: Optional[float] = None
        self.escalate_at: Optional[float] = None
        self.kill_at: Optional[float] = None
        self.term_sent = False
        self.note = ""
        self.watchdog: Optional[Watchdog] = None

    def _log(self, message: str) -> None:
        self.launcher._log(message)

    def trainer_pids(self) -> Dict[int, int]:
        pids = att.read_control_dir(self.control).pids
        live = {}
        for rank, pid in pids.items():
            ticks = start_ticks(pid)
            if pid_alive(pid) and (ticks is None or ticks >= self.child_ticks):
                live[rank] = pid
        seen = time.time()
        for rank in live:  # which trainer ended first tells a cause from its consequences
            self.launcher._alive_until[rank] = seen
        return live

    def forward(self, pids: Dict[int, int], only_new: bool) -> None:
        for rank, pid in sorted(pids.items()):
            if only_new and pid in self.signalled:
                continue
            try:
                os.kill(pid, STOP_SIGNAL)
                self.signalled.add(pid)
                self._log(f"sent {STOP_SIGNAL.name} to trainer rank {rank} (pid {pid})")
            except ProcessLookupError:
                pass

    def handle_signals(self) -> None:
        launcher, cenv = self.launcher, self.cenv
        while self.handled < len(launcher._signals):
            signum, when = launcher._signals[self.handled]
            self.handled += 1
            name = signal.Signals(signum).name
            if self.stop_at is None:
                self.stop_at = when
                self._log(f"received {name}: asking the trainers to save at the next step boundary and stop")
                self.forward(self.trainer_pids(), only_new=False)
                remaining = None
                if cenv.is_slurm and cenv.node_rank == 0:
                    end = cenv.refresh_end_time()
                    remaining = None if end is None else end - when
                    launcher._remaining_at_signal = remaining
                    launcher._preempted_at_signal = cenv.query_preempted()
                    self._log(f"time left in the allocation when {name} arrived: "
                              f"{'unknown' if remaining is None else f'{remaining:.0f}s'}; "
                              f"being preempted: {launcher._preempted_at_signal}")
                elif cenv.is_slurm and cenv.end_time is not None:
                    remaining = cenv.end_time - when
                grace = stop_grace(launcher.stop_grace_s, self.env, self.spec, remaining, not cenv.is_slurm)
                self.escalate_at = time.monotonic() + grace
                self._log(f"waiting up to {grace:.0f}s for the trainers to stop")
            else:
                self._log(f"received {name} again")
                self.forward(self.trainer_pids(), only_new=False)
                if signum in (signal.SIGINT, signal.SIGTERM) and not cenv.is_slurm:
                    self.escalate_at = time.monotonic()  # a second Ctrl-C / TERM locally: stop now

    def escalate(self, now: float) -> None:
        child = self.child
        assert child is not None
        if not self.term_sent:
            why = "trainers did not stop in time" if self.stop_at is not None else "ending the attempt"
            self._log(f"{why}: sending SIGTERM to the paddle launcher and the trainers")
            try:
                child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            for pid in self.trainer_pids().values():
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            self.term_sent = True
            self.kill_at = now + self.launcher.kill_after_s
        elif self.kill_at is not None and now >= self.kill_at:
            self._log("sending SIGKILL to the paddle launcher and the remaining trainers")
            for pid in [child.pid, *self.trainer_pids().values()]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.kill_at = None

    def run(self) -> Tuple[Optional[int], str]:
        """Start the paddle launcher and supervise it to the end: (its exit code or None, a note)."""
        launcher, cenv = self.launcher, self.cenv
        try:
            child = subprocess.Popen(self.argv, env=self.env, start_new_session=True, preexec_fn=ignore_stop_signals)
        except OSError as exc:
            self._log(f"ERROR: cannot start {self.argv[0]}: {exc}")
            return None, f"cannot start the launcher: {exc}"
        self.child = child
        self.child_ticks = start_ticks(child.pid) or 0
        self._log(f"started launcher pid {child.pid}")
        start_timeout = launcher.start_timeout_s if launcher.start_timeout_s is not None else \
            env_float(self.env, "ERNIE_CLUSTER_START_TIMEOUT_S", 1800.0)
        start_deadline = time.monotonic() + float(start_timeout)
        next_peer_check = 0.0
        self.watchdog = self._make_watchdog()

        while child.poll() is None:
            self.handle_signals()
            pids = self.trainer_pids()
            now = time.monotonic()
            if self.stop_at is not None:
                self.forward(pids, only_new=True)  # trainers that registered after the signal
                if self.escalate_at is not None and now >= self.escalate_at:
                    self.escalate(now)
            elif not self.term_sent and not self._watch(pids, now) and now >= start_deadline:
                start_deadline = float("inf")  # decided once: every trainer started, or the attempt ends
                self._check_start(now, start_timeout)
            if cenv.num_nodes > 1 and now >= next_peer_check and not self.term_sent:
                next_peer_check = now + 2.0
                self._check_peer(now)
            if self.term_sent and self.kill_at is not None and now >= self.kill_at:
                self.escalate(now)
            time.sleep(launcher.poll_s)
        rc = child.returncode
        self._log(f"paddle launcher exited with {rc}")
        self._reap(rc)
        self.handle_signals()
        return rc, self.note

    def _stop_itself(self, note: str, now: float) -> None:
        """End the attempt from here (a hang, a failed peer): the note, then SIGTERM (SIGKILL later)."""
        self.note = note
        self.launcher._stopped_itself = True
        self.escalate_at = now
        self.escalate(now)

    def _check_start(self, now: float, start_timeout: float) -> None:
        """The start watchdog, once its time is up: trainers neither past their first collective nor beating."""
        if self._started() >= self.spec.resources.trainers_per_node:
            return
        cenv = self.cenv
        note = (f"the trainers were not all past their first collective within {start_timeout:.0f}s "
                f"(rendezvous at {cenv.main_address}:{cenv.main_port}?)")
        self._log(f"ERROR: {note}; stopping the launcher")
        self.launcher._start_failed = note
        self._stop_itself(note, now)

    def _check_peer(self, now: float) -> None:
        """Another node published a failure: this node only follows it."""
        peer = failed_peer(self.control.parent.parent, self.cenv)
        if peer:
            note = f"node {peer[0]} failed: {peer[1]}"
            self._log(f"ERROR: {note}; stopping this node's launcher")
            self.launcher._peer_failed = note
            self._stop_itself(note, now)

    def _make_watchdog(self) -> Watchdog:
        """This node's hang watchdog: its own trainers' heartbeats, every other node's (on the shared run
        directory) for context; limits from cluster.watchdog."""
        cfg = self.spec.cluster.watchdog
        node_dir = self.control.parent

        def peers() -> List[Path]:  # the other nodes' directories appear as they start
            return [heartbeat_dir(d / "control") for d in sorted(node_dir.parent.glob("node*")) if d != node_dir]

        limits = Limits.from_mapping(cfg.model_dump())
        self._log(f"hang watchdog {'on' if cfg.enabled else 'off (warnings only)'}: silence allowed in start-up "
                  f"{limits.startup_s:g}s, data {limits.data_s:g}s, evaluation {limits.evaluation_s:g}s, checkpoint "
                  f"{limits.checkpoint_s:g}s, training {limits.step_factor:g} x median step (at least "
                  f"{limits.step_s_min:g}s; {limits.warmup_s:g}s until {limits.min_step_samples} steps were measured)")
        return Watchdog([heartbeat_dir(self.control)], node_dir, limits, log=self._log, stop_hung=cfg.enabled,
                        peers=peers)

    def _started(self) -> int:
        """Trainers of this node the start watchdog no longer covers: past their first collective, or (the
        hang watchdog being on) beating, which hands them to the hang watchdog's phase limits."""
        started = set(att.read_control_dir(self.control).ready)
        if self.watchdog is not None and self.watchdog.stop_hung:
            started |= set(read_heartbeats(heartbeat_dir(self.control)))
        return len(started)

    def _watch(self, pids: Dict[int, int], now: float) -> bool:
        """The hang watchdog's poll. True when a rank of this node is hung: its stacks were recorded, the
        attempt is `hung` (NodeLauncher._hung) and the launcher and trainers are being stopped.

        This node's result is published before any trainer is stopped: the trainers of other nodes fail once
        these are gone, and their nodes must find this one failed first (`failed_peer`: `peer-failed`), not
        take their own broken collectives for the cause."""
        if self.watchdog is None:
            return False
        verdict = self.watchdog.check(pids)
        if verdict is None:
            return False
        cenv = self.cenv
        ranks = [r for r in verdict.suspects if r in pids] or [h.rank for h in verdict.hung if h.rank in pids]
        note = (f"hung on node {cenv.node_rank} ({cenv.node_name}), ranks {ranks}: {verdict.describe()}; Python "
                f"stacks in {self.control.parent}/stacks.rank<k>.txt")
        self._log(f"ERROR: {note}; stopping the launcher")
        wall = time.time()
        silent_since = min((wall - h.silent_s for h in verdict.hung if h.rank in ranks), default=wall)
        outcome = att.NodeOutcome("failed", verdict.last_step, note, retryable=True, cause="hung", ranks=ranks,
                                  failed_at=silent_since)
        self.launcher._hung = outcome
        write_node_result(self.control.parent, dict(outcome.to_dict(), launcher_exit_code=None,
                                                    node=cenv.node_name, time=wall, preliminary=True))
        self._stop_itself(note, now)
        # The stacks are recorded and nothing is left to save: the other ranks wait in a collective with
        # the hung one, and a frozen or D-state trainer ignores TERM. Kill soon instead of after the grace.
        self.kill_at = min(self.kill_at or now + HUNG_KILL_AFTER_S, now + HUNG_KILL_AFTER_S)
        return True

    def _reap(self, rc: Optional[int]) -> None:
        """Trainers run in their own sessions: make sure none outlives the launcher."""
        launcher = self.launcher
        leftover = self.trainer_pids()
        if not leftover:
            return
        self._log(f"trainers still running after the launcher exited: {sorted(leftover.values())}")
        if self.stop_at is None:
            if not self.term_sent:  # nothing asked it to stop: the paddle launcher died under its trainers
                launcher._orphaned = sorted(leftover)
                self._log(f"paddle.distributed.launch died (exit {rc}) with no stop signal: asking trainer "
                          f"ranks {launcher._orphaned} to save at the next step boundary and stop")
            launcher._stopped_itself = True
            self.forward(leftover, only_new=False)
        grace = 60.0 if self.stop_at is None else \
            max(10.0, (self.escalate_at or time.monotonic()) - time.monotonic())
        deadline = time.monotonic() + grace
        sent_term = False
        while leftover:
            self.handle_signals()
            now = time.monotonic()
            if now >= deadline and not sent_term:
                for pid in leftover.values():
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                sent_term, deadline = True, now + min(15.0, launcher.kill_after_s)
            elif now >= deadline and sent_term:
                for pid in leftover.values():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                break
            time.sleep(launcher.poll_s)
            leftover = self.trainer_pids()
