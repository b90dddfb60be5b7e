"""Follow a run from its directory and Slurm's answers: the figures of now, and one event for each thing that
happened (an attempt started, a stop signal, a preemption, a requeue, a resume, a checkpoint, a failure, the
conversion). The live console (`console`) draws them; nothing here prints.

`RunWatcher.poll()` only reads: small JSON files and what the logs gained since the last poll (`LogTail`);
no lock the jobs use is taken, nothing is written. The console polls a few times a second; the checkpoint
directory, the conversion report and the hang watchdog's view are looked at every `slow_s`, and Slurm is asked
every `slurm_s` (job states, and the expected start of a pending job).

The first poll replays the run so far, so `status --follow` started late (or on a finished run) still tells
the story. A problem of the watcher itself (an unreadable file, Slurm not answering) is an event too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import progress as pg
from . import slurm
from .procs import pid_alive
from .rundir import CONVERT_REPORT, AttemptRecord, RunDir, RunState

LOCAL_ENDED = ("COMPLETED", "FAILED", "CANCELLED")
LOCAL_PREFIX = "[ernie_cluster local] "  # local.LocalSupervisor._log
STOP_WORDS = {"preempted": ("preempted", "preempted by Slurm"), "timeout": ("timeout", "stopped at the time limit"),
              "cancelled": ("cancelled", "cancelled")}


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class Event:
    time: float
    kind: str  # start, signal, preempted, timeout, cancelled, stopped, requeue, resume, nodes, checkpoint, completed,
    #            failed, convert, converted, job, node, data, warning, error, hung, straggler
    text: str


@dataclass
class _Attempt:
    series: pg.AttemptSeries
    directory: Path
    worker: pg.LogTail
    launchers: Dict[str, pg.LogTail] = field(default_factory=dict)
    announced: bool = False


def end_events(index: int, record: AttemptRecord, when: float) -> List[Event]:
    """The events of an attempt's end: how it ended, then the requeue (or its refusal) and the nodes."""
    reason, cause, step = record.get("reason"), record.get("cause"), record.get("step")
    at = f" at step {step}" if step is not None else ""
    message = str(record.get("message") or "")
    if reason == "completed":
        events = [Event(when, "completed", f"attempt {index} completed{at}")]
    elif reason == "stopped":
        kind, what = STOP_WORDS.get(str(cause), ("stopped", f"stopped by {record.get('signal') or 'a signal'}"))
        if cause == "signal":
            kind = "preempted"  # the local backend's simulated preemption
        events = [Event(when, kind, f"attempt {index} {what}{at}; the trainers saved a checkpoint there")]
    else:
        events = [Event(when, "failed", f"attempt {index} {reason or 'failed'}{at} ({cause or 'no cause'}): {message}")]
    for failure in record.get("failed_nodes") or []:
        events.append(Event(when, "node", f"node {failure.get('node')} died: {failure.get('why')}"))
    for node, why in (record.get("excluded") or {}).items():
        events.append(Event(when, "node", f"node {node} left out of the requeued job: {why}"))
    action = record.get("action")
    why = message.rsplit("; ", 1)[-1] if "; " in message else message
    if action == "requeue":
        events.append(Event(when, "requeue", f"attempt {index} requeued ({why})"))
    elif action in ("requeue-denied", "requeue-failed"):
        events.append(Event(when, "failed", f"attempt {index} {action}: {message}"))
    return events


class RunWatcher:
    def __init__(self, run: RunDir, *, slow_s: float = 2.0, slurm_s: float = 15.0,
                 clock: Callable[[], float] = time.time):
        self.run = run
        self.slow_s, self.slurm_s, self.clock = slow_s, slurm_s, clock
        self.max_steps: Optional[int] = None
        self.model_dir = run.converted
        self._spec_loaded = False
        self.attempts: Dict[Tuple[str, int], _Attempt] = {}
        self.order: List[Tuple[str, int]] = []
        self.records: Dict[Tuple[str, int], str] = {}
        self.state: RunState = {}
        self.jobs: List[Dict[str, Any]] = []  # status-like rows of the Slurm jobs
        self.checkpoint: Optional[Dict[str, Any]] = None
        self.conversion: Optional[Dict[str, Any]] = None
        self.beat: Optional[Dict[str, Any]] = None
        self.polls = 0
        self._output: Optional[pg.LogTail] = None  # the local jobs' output: the supervisor's own problems
        self._seen: set = set()  # texts of warnings and watchdog findings already told
        self._last_slow = float("-inf")
        self._last_slurm = float("-inf")

    # ------------------------------------------------------------------ polling ---

    def poll(self, *, force: bool = False) -> List[Event]:
        """What happened since the last poll, oldest first; `force`: look at everything now (the last poll)."""
        events: List[Event] = []
        # an attempt's end before the run's
        for step in (self._poll_records, self._poll_attempts, self._poll_state, self._poll_output):
            self._guard(step, events)
        now = time.monotonic()
        if force or now - self._last_slow >= self.slow_s:
            self._last_slow = now
            for step in (self._poll_checkpoint, self._poll_conversion, self._poll_watchdog):
                self._guard(step, events)
        if self.state.get("backend") == "slurm" and now - self._last_slurm >= self.slurm_s:
            self._last_slurm = now
            self._guard(self._poll_slurm, events)
        if self.polls == 0:  # the replay of a run followed late: its latest checkpoint only
            last = [e for e in events if e.kind == "checkpoint"][-1:]
            events = [e for e in events if e.kind != "checkpoint" or e in last]
        self.polls += 1
        # Log times have whole seconds: within a second, the order the events were found in is the true one.
        return sorted(events, key=lambda e: int(e.time))

    def _guard(self, step: Callable[[List[Event]], None], events: List[Event]) -> None:
        """A watcher problem is an event (once per text), never a crash of the console."""
        try:
            step(events)
        except Exception as exc:  # noqa: BLE001 - the run goes on whatever the console cannot read
            self._once(events, "warning", f"console: {step.__name__.strip('_').replace('_', ' ')} failed: "
                                          f"{type(exc).__name__}: {exc}")

    def _once(self, events: List[Event], kind: str, text: str, when: Optional[float] = None) -> None:
        if text not in self._seen:
            self._seen.add(text)
            events.append(Event(when or self.clock(), kind, text))

    def _poll_state(self, events: List[Event]) -> None:
        if not self._spec_loaded:
            self._spec_loaded = True
            from .spec import load_frozen

            try:
                spec = load_frozen(self.run.spec)
                self.max_steps, self.model_dir = spec.train.max_steps, spec.convert_dir()
            except Exception as exc:  # noqa: BLE001 - figures without max_steps, the default conversion path
                self._once(events, "warning", f"console: cannot read {self.run.spec}: {type(exc).__name__}: {exc}")
        old = self.state.get("local_state")
        try:
            self.state = self.run.read_state()
        except (OSError, ValueError) as exc:  # written atomically: a read error is not a torn file
            self._once(events, "warning", f"console: cannot read {self.run.state}: {exc}")
            return
        new = self.state.get("local_state")
        if new == old:
            return
        if new == "CONVERTING":
            events.append(Event(self.clock(), "convert", "training completed: the conversion runs"))
        elif new == "FAILED" and self.state.get("convert_exit_code"):
            from .local import output_file

            out = output_file(self.run, f"local{self.state.get('supervisor_pid')}")
            events.append(Event(self.clock(), "failed", f"the conversion failed (exit "
                                                        f"{self.state.get('convert_exit_code')}); its output: {out}"))
        elif new in ("FAILED", "CANCELLED"):
            events.append(Event(self.clock(), new.lower(), f"run {new}"))

    def _poll_output(self, events: List[Event]) -> None:
        """The local supervisor's WARNING and ERROR lines (the rest of that file is the jobs' detailed output)."""
        pid = self.state.get("supervisor_pid")
        if self.state.get("backend") != "local" or not pid:
            return
        if self._output is None:
            from .local import output_file

            self._output = pg.LogTail(output_file(self.run, f"local{pid}"))
        for line in self._output.read():
            level, sep, text = line.removeprefix(LOCAL_PREFIX).partition(": ")
            if line.startswith(LOCAL_PREFIX) and sep and level in ("WARNING", "ERROR"):
                self._once(events, level.lower(), text)

    def _poll_records(self, events: List[Event]) -> None:
        for record in self.run.read_attempts():
            key = pg.record_key(record)
            text = json.dumps(record, sort_keys=True)
            if self.records.get(key) == text:
                continue
            updated = key in self.records
            self.records[key] = text
            attempt = self._attempt(key)
            attempt.series.record = record
            self._read_logs(attempt, events)  # its last lines come before its end
            if record.get("nodes"):
                attempt.series.nodes = int(record["nodes"])  # type: ignore[arg-type]
            when = float(record.get("ended") or self.clock())  # type: ignore[arg-type]
            ends = end_events(self.order.index(key), record, when)
            if updated:
                ends = [Event(e.time, e.kind, e.text + " (record corrected from Slurm)") for e in ends]
            events.extend(ends)

    def _attempt(self, key: Tuple[str, int]) -> _Attempt:
        if key not in self.attempts:
            directory = self.run.logs / f"attempt-{key[0]}-{key[1]}"
            series = pg.AttemptSeries(directory.name, key[0], key[1])
            self.attempts[key] = _Attempt(series, directory, pg.LogTail(directory / "node0" / "workerlog.0"))
            self.order.append(key)
        return self.attempts[key]

    def _poll_attempts(self, events: List[Event]) -> None:
        for key in pg.attempt_order([], pg.attempt_dirs(self.run)):
            self._attempt(key)
        for key in self.order:
            attempt = self.attempts[key]
            if attempt.series.record is None:
                self._read_logs(attempt, events)
        current = self.current
        self.beat = pg.read_heartbeat(current.directory) if current and current.series.record is None else None

    def _read_logs(self, attempt: _Attempt, events: List[Event]) -> None:
        s, index = attempt.series, self.order.index((attempt.series.job_id, attempt.series.restart))
        found: List[pg.LogEvent] = []
        for node_dir in sorted(attempt.directory.glob("node*")):
            tail = attempt.launchers.setdefault(node_dir.name, pg.LogTail(node_dir / "launcher.log"))
            found += pg.parse_launcher_lines(tail.read(), s)
        if s.started is not None and not attempt.announced:
            attempt.announced = True
            events.append(Event(s.started, "start", f"attempt {index}: job {s.job_id}, restart {s.restart}, "
                                                    f"{plural(s.nodes or 0, 'node')}"))
        found += pg.parse_worker_lines(attempt.worker.read(), s)
        for e in found:
            text = e.text
            if e.kind == "resume":
                done = max((a.series.reached or 0 for k, a in self.attempts.items() if k != (s.job_id, s.restart)
                            and self.order.index(k) < index), default=0)
                redo = max(0, done - (s.resumed_from or 0))
                text = f"attempt {index} resumed {text}; {redo} step(s) to compute again"
            if e.kind in ("checkpoint", "resume"):  # paths inside the run directory: relative to it
                text = text.replace(f"{self.run.root}/", "")
            if e.kind in ("warning", "error", "data"):
                self._once(events, e.kind, text, e.time)
            else:
                events.append(Event(e.time or self.clock(), e.kind, text))

    def _poll_checkpoint(self, events: List[Event]) -> None:
        """The newest complete checkpoint for the figures (its event comes from the trainer's log line, in time)."""
        from .runs import last_checkpoint

        self.checkpoint = last_checkpoint(self.run)

    def _poll_conversion(self, events: List[Event]) -> None:
        report = self.model_dir / CONVERT_REPORT
        if self.conversion is not None or not report.exists():
            return
        try:
            data = json.loads(report.read_text())
        except (OSError, ValueError) as exc:
            self._once(events, "warning", f"console: cannot read {report}: {exc}")
            return
        self.conversion = {**data, "model_dir": str(self.model_dir)}
        verdict = "verified: max |static - dynamic| " + str(data.get("max_abs_diff")) if data.get("passed") \
            else "verification FAILED: max |static - dynamic| " + str(data.get("max_abs_diff"))
        kind = "converted" if data.get("passed") else "failed"
        events.append(Event(report.stat().st_mtime, kind, f"model {self.model_dir} ({verdict})"))

    def _poll_watchdog(self, events: List[Event]) -> None:
        from .launch.watchdog import Hung, Straggler
        from .runs import watchdog_view

        view = watchdog_view(self.run)
        for key, kind, record in (("hung", "hung", Hung), ("stragglers", "straggler", Straggler)):
            for entry in (view or {}).get(key) or []:
                try:
                    text = record(**entry).describe()
                except TypeError:  # another version's watchdog.json: as it is
                    text = str(entry)
                self._once(events, kind, f"{text} ({view['attempt']})")  # type: ignore[index]

    def _poll_slurm(self, events: List[Event]) -> None:
        ids = self.run.job_ids(self.state)
        found = slurm.job_states(list(ids.values()))
        pending = [j for j in ids.values() if found.get(j, ("",))[0] == "PENDING"]
        starts = slurm.expected_starts(pending) if pending else {}
        if isinstance(starts, slurm.NoAnswer):
            self._once(events, "warning", f"console: squeue --start did not answer: {starts.reason}")
            starts = {}
        old = {j["kind"]: (j["state"], j["reason"]) for j in self.jobs}
        self.jobs = []
        for kind, jid in ids.items():
            state, reason = found.get(jid, ("GONE", "no longer known to squeue or sacct"))
            row = {"kind": kind, "job_id": jid, "state": state, "reason": reason, "expected_start": starts.get(jid)}
            self.jobs.append(row)
            if old.get(kind) != (state, reason):
                what = "training" if kind == "train" else "conversion"
                extra = f", expected start {pg.fmt_time(row['expected_start'])}" if row["expected_start"] else ""
                events.append(Event(self.clock(), "job", f"{what} job {jid}: {state}"
                                                          f"{' (' + reason + ')' if reason else ''}{extra}"))

    # ------------------------------------------------------------------ views ---

    @property
    def series(self) -> List[pg.AttemptSeries]:
        return [self.attempts[k].series for k in self.order]

    @property
    def current(self) -> Optional[_Attempt]:
        return self.attempts[self.order[-1]] if self.order else None

    def figures(self) -> Dict[str, Any]:
        figs = pg.figures(self.series, self.max_steps, self.beat)
        figs.update(name=self.state.get("name"), backend=self.state.get("backend"),
                    state=self.run_state(), checkpoint=self.checkpoint, jobs=self.jobs,
                    index=len(self.order) - 1 if self.order else None)
        figs["waiting"] = pg.waiting_on(self.jobs, figs)
        return figs

    def run_state(self) -> str:
        if self.state.get("backend") == "local":
            return str(self.state.get("local_state") or "STARTING")
        train = next((j for j in self.jobs if j["kind"] == "train"), None)
        return str(train["state"]) if train else "UNKNOWN"

    def finished(self) -> Optional[str]:
        """The run's final state once nothing of it runs any more; None while it does."""
        if self.state.get("backend") == "local":
            ended = self.state.get("local_state")
            if ended in LOCAL_ENDED:
                return str(ended)
            pid = self.state.get("supervisor_pid")
            if pid and not pid_alive(int(pid), cmdline_contains="ernie_cluster"):
                return f"STOPPED (the local supervisor, pid {pid}, is gone)"
            return None
        if self.state.get("backend") != "slurm":  # nothing to follow: say so rather than wait forever
            return "UNKNOWN (state.json names no backend)"
        if not self.run.job_ids(self.state):
            return "UNKNOWN (state.json records no job)"
        if not self.jobs:
            return None
        from .submit import ALIVE_STATES  # the one list of live Slurm states

        states = [j["state"] for j in self.jobs]
        if any(s in ALIVE_STATES or s == "UNKNOWN" for s in states):
            return None
        return next((s for s in states if s != "COMPLETED"), "COMPLETED")

    def summary(self, final: Optional[str] = None) -> Dict[str, Any]:
        from .launch.attempt import cause_counts

        records = [json.loads(self.records[k]) for k in self.order if k in self.records]
        loss = pg.final_loss(self.series)
        started = self.state.get("submitted_at")
        return {"state": final or self.finished() or self.run_state(), "attempts": len(self.order),
                "causes": cause_counts(records), "steps_lost": pg.run_steps_lost(self.series),
                "step": max((s.reached or 0 for s in self.series), default=None), "max_steps": self.max_steps,
                "final_loss": loss, "model_dir": (self.conversion or {}).get("model_dir"),
                "verified": (self.conversion or {}).get("passed"),
                "elapsed_s": self._ended(records, final) - float(started) if started else None}

    def _ended(self, records: List[Dict[str, Any]], final: Optional[str]) -> float:
        """When the run's last piece ended (a finished run followed later), else now."""
        if not (final or self.finished()):
            return self.clock()
        times = [float(r["ended"]) for r in records if r.get("ended")]
        # The local supervisor writes state.json last; on Slurm it was written at the submission.
        local = self.state.get("backend") == "local"
        for path in ((self.run.state,) if local else ()) + (self.model_dir / CONVERT_REPORT,):
            try:
                times.append(path.stat().st_mtime)
            except OSError:
                pass
        return max(times, default=self.clock())


def summary_lines(summary: Dict[str, Any]) -> List[str]:
    """The run's end in a few plain lines: state and time, attempts, steps lost, final loss, converted model."""
    causes = "; ".join(f"{n['attempts']} {cause}" + (", requeued" if n["requeued"] == n["attempts"] else
                                                     f", {n['requeued']} requeued" if n["requeued"] else "")
                       for cause, n in summary["causes"].items())
    loss = summary.get("final_loss")
    of = f"/{summary['max_steps']}" if summary.get("max_steps") else ""
    model = summary.get("model_dir")
    verdict = {True: "verified", False: "verification FAILED", None: "not verified"}[summary.get("verified")]
    return [f"run {summary['state']} after {pg.fmt_duration(summary.get('elapsed_s'))}",
            f"  attempts:        {summary['attempts']}" + (f" ({causes})" if causes else ""),
            f"  steps lost:      {summary['steps_lost']} (computed again after resumes)",
            f"  final loss:      {loss[1]:.6f} at step {loss[0]}{of}" if loss else "  final loss:      none logged",
            f"  converted model: {model} ({verdict})" if model else "  converted model: none"]
