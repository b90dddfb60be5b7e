"""Look at a run from the login node: status, logs, cancel. Reads the run directory and asks Slurm; no paddle."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import progress as pg
from . import slurm
from .rundir import CONVERT_REPORT, DATA_REPORT, AttemptRecord, RunDir, RunState
from .slurm import job_states as slurm_jobs
from .train.ckpt_format import MANIFEST_FILE, STATE_FILE, STEP_GLOB  # standard library only (no paddle/numpy)


class RunNotFound(Exception):
    pass


def open_run(path: str) -> RunDir:
    run = RunDir(Path(path).expanduser().resolve())
    if not run.state.exists():
        raise RunNotFound(f"{run.root} is not a run directory (no state.json); pass the directory `submit` printed")
    return run


def last_checkpoint(run: RunDir) -> Optional[Dict[str, Any]]:
    """Newest checkpoint whose manifest was written (the manifest comes last, so it marks completeness)."""
    if not run.checkpoints.is_dir():
        return None
    for path in sorted(run.checkpoints.glob(STEP_GLOB), reverse=True):
        if (path / MANIFEST_FILE).exists():
            try:
                state = json.loads((path / STATE_FILE).read_text())
            except (OSError, json.JSONDecodeError):
                continue
            return {"path": str(path), "step": state.get("step"), "consumed_samples": state.get("consumed_samples")}
    return None


@dataclass
class RunStatus:
    run_dir: Path
    name: str
    backend: str
    jobs: List[Dict[str, Any]] = field(default_factory=list)
    attempts: List[AttemptRecord] = field(default_factory=list)
    checkpoint: Optional[Dict[str, Any]] = None
    conversion: Dict[str, Any] = field(default_factory=dict)
    max_steps: Optional[int] = None
    data: Optional[Dict[str, Any]] = None  # data_cache/data_report.json: documents that give no sample
    watchdog: Optional[Dict[str, Any]] = None  # the hang watchdog's latest view (`watchdog_view`)
    progress: Dict[str, Any] = field(default_factory=dict)  # `progress.figures`: step, loss, samples/s, ETA...
    waiting: List[str] = field(default_factory=list)  # what the run waits on now (`progress.waiting_on`)

    def as_dict(self) -> Dict[str, Any]:
        return {"run_dir": str(self.run_dir), "name": self.name, "backend": self.backend, "jobs": self.jobs,
                "attempts": self.attempts, "checkpoint": self.checkpoint, "conversion": self.conversion,
                "max_steps": self.max_steps, "data": self.data, "causes": _cause_counts(self.attempts),
                "nodes": _node_events(self.attempts),
                "watchdog": self.watchdog, "progress": self.progress, "waiting": self.waiting}


def _node_events(attempts: List[AttemptRecord]) -> Dict[str, List[Dict[str, Any]]]:
    from .launch.node_faults import node_events
    return node_events(attempts)


def _print_nodes(console: Any, attempts: List[AttemptRecord]) -> None:
    """The nodes that died, were left out of a requeued job, or were at fault but kept."""
    from rich.markup import escape

    events = _node_events(attempts)
    for e in events["failed"]:
        console.print(f"[red]node {escape(str(e['node']))} died[/red] {_fmt_when(e.get('at'))} (attempt "
                      f"{e['attempt']}): {escape(str(e.get('why') or ''))}", highlight=False)
    for e in events["excluded"]:
        console.print(f"[yellow]excluded node {escape(str(e['node']))}[/yellow] from the job after attempt "
                      f"{e['attempt']}: {escape(str(e['why']))}", highlight=False)
    for e in events["not_excluded"]:
        console.print(f"node {escape(str(e['node']))} not excluded after attempt {e['attempt']}: "
                      f"{escape(str(e['why']))}", highlight=False)


def _fmt_when(value: Any) -> str:
    if isinstance(value, (int, float)):
        return "at " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return "at an unknown time"


def _cause_counts(attempts: List[AttemptRecord]) -> Dict[str, Dict[str, int]]:
    from .launch.attempt import cause_counts
    return cause_counts(attempts)


def collect_status(run: RunDir) -> RunStatus:
    state = run.read_state()
    status = RunStatus(run.root, state.get("name", "?"), state.get("backend", "?"))
    model_dir = run.converted
    try:
        from .spec import load_frozen
        spec = load_frozen(run.spec)
        status.max_steps = spec.train.max_steps
        if spec.convert.output_dir:  # the conversion writes there, not into RUN/converted
            model_dir = spec.convert_dir()
    except Exception:  # a status must still show with a damaged spec copy
        pass
    status.jobs = _slurm_jobs(run, state) if status.backend == "slurm" else [_local_job(run, state)]
    status.attempts = run.read_attempts()
    status.checkpoint = last_checkpoint(run)
    try:  # written by the data preparation (ernie_cluster.train.data)
        status.data = json.loads((run.data_cache / DATA_REPORT).read_text())
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        status.data = {"error": f"unreadable data_cache/{DATA_REPORT}"}
    status.watchdog = watchdog_view(run)
    _add_progress(run, status)
    report = model_dir / CONVERT_REPORT
    if report.exists():
        try:
            status.conversion = json.loads(report.read_text())
        except json.JSONDecodeError:
            status.conversion = {"error": f"unreadable {CONVERT_REPORT}"}
        status.conversion["model_dir"] = str(model_dir)
    return status


def _add_progress(run: RunDir, status: RunStatus) -> None:
    """The latest figures from the trainers' logs and heartbeat, and what the run waits on. No ETA and no
    phase unless training runs now: a stopped run's last attempt may have left no record."""
    series = pg.collect(run, launcher_logs=True)
    current = series[-1] if series else None
    beat = pg.read_heartbeat(run.logs / current.name) if current is not None and current.record is None else None
    status.progress = pg.figures(series, status.max_steps, beat)
    running = bool(status.jobs) and status.jobs[0].get("state") in ("RUNNING", "COMPLETING", "CONVERTING")
    if not running and current is not None and current.record is None:
        status.progress.update(eta_s=None, phase=None)
    status.waiting = pg.waiting_on(status.jobs, status.progress)


def watchdog_view(run: RunDir) -> Optional[Dict[str, Any]]:
    """The hang watchdog's latest view (the newest watchdog.json any node launcher wrote, with the other nodes'
    of that attempt): hung ranks, stragglers, ranks waiting for a peer; None before any was written."""
    from .launch.watchdog import SUMMARY, read_summary

    by_attempt: Dict[Path, List[Dict[str, Any]]] = {}
    for path in run.logs.glob(f"attempt-*/node*/{SUMMARY}"):
        summary = read_summary(path.parent)
        if summary is not None and isinstance(summary.get("time"), (int, float)):
            by_attempt.setdefault(path.parent.parent, []).append(summary)
    if not by_attempt:
        return None
    attempt, summaries = max(by_attempt.items(), key=lambda item: max(s["time"] for s in item[1]))
    newest = max(s["time"] for s in summaries)

    def unique(key: str) -> List[Dict[str, Any]]:  # every node sees every rank: one entry per rank
        seen: Dict[Any, Dict[str, Any]] = {}
        for s in sorted(summaries, key=lambda s: s["time"]):
            for entry in s.get(key) or []:
                if isinstance(entry, dict):
                    seen[entry.get("rank")] = entry
        return [seen[r] for r in sorted(seen, key=str)]

    return {"attempt": attempt.name, "time": newest, "age_s": round(time.time() - newest, 1),
            "hung": unique("hung"), "stragglers": unique("stragglers"),
            "waiting": sorted({r for s in summaries for r in s.get("waiting") or []})}


def _slurm_jobs(run: RunDir, state: RunState) -> List[Dict[str, Any]]:
    """One row per recorded job: Slurm's state and reason, its attempts in sacct and its restarts."""
    ids = run.job_ids(state)
    found = slurm_jobs(list(ids.values()))
    rows = []
    for kind, jid in ids.items():
        job_state, reason = found.get(jid, ("UNKNOWN", ""))
        row: Dict[str, Any] = {"kind": kind, "job_id": jid, "state": job_state, "reason": reason}
        history = slurm.job_attempts(jid)
        row["slurm_attempts"] = history
        restarts = slurm.restart_count(jid)
        row["restarts"] = restarts if restarts is not None else max(0, len(history) - 1)
        if kind == "train":
            row["logs"] = str(run.slurm / jid)
        rows.append(row)
    pending = [r["job_id"] for r in rows if r["state"] == "PENDING"]
    starts = slurm.expected_starts(pending) if pending else {}
    for r in rows:  # Slurm's estimate (squeue --start); None when it has none or did not answer
        r["expected_start"] = starts.get(r["job_id"]) if isinstance(starts, dict) else None
    return rows


def _local_job(run: RunDir, state: RunState) -> Dict[str, Any]:
    """The local supervisor's row: what it last wrote into state.json."""
    pid = state.get("supervisor_pid")
    return {"kind": "local", "job_id": f"local{pid}" if pid else str(pid),  # as the attempts name it
            "state": state.get("local_state", "UNKNOWN"), "restarts": state.get("restarts", 0), "logs": str(run.logs)}


def print_status(status: RunStatus, *, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(status.as_dict(), indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    # Piped or redirected (a file, a non-interactive ssh): full values, never squeezed into 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=1000, soft_wrap=True)
    console.print(f"[bold]{status.name}[/bold]  {status.run_dir}  (backend {status.backend})")
    jobs = Table(title="jobs")
    for col in ("job", "id", "state", "restarts", "logs"):
        jobs.add_column(col)
    for j in status.jobs:
        state = f"{j['state']} ({j['reason']})" if j.get("reason") else j["state"]
        jobs.add_row(j["kind"], str(j["job_id"]), state, str(j.get("restarts", "")), j.get("logs", ""))
    console.print(jobs)
    if status.attempts:
        attempts = Table(title="training attempts")
        for col in ("#", "job", "restart", "nodes", "started", "ended", "reason", "cause", "step", "action"):
            attempts.add_column(col)
        for i, a in enumerate(status.attempts):
            attempts.add_row(str(i), str(a.get("job_id", "")), str(a.get("restart", "")), str(a.get("nodes", "")),
                             _fmt_time(a.get("started")),
                             _fmt_time(a.get("ended")), str(a.get("reason", "")), str(a.get("cause") or ""),
                             str(a.get("step", "")), str(a.get("action", "")))
        console.print(attempts)
        console.print("attempts by cause: " + ", ".join(f"{c} {n['attempts']} ({n['requeued']} requeued)"
                                                          for c, n in _cause_counts(status.attempts).items()))
        _print_nodes(console, status.attempts)
    if status.data and status.data.get("summary"):
        from rich.markup import escape

        console.print(f"[yellow]WARNING[/yellow] data: {escape(status.data['summary'])}", highlight=False)
    _print_watchdog(console, status.watchdog)
    _print_progress(console, status)
    ckpt = status.checkpoint
    steps = f"/{status.max_steps}" if status.max_steps else ""
    console.print(f"last checkpoint: step {ckpt['step']}{steps} ({ckpt['path']})" if ckpt else "last checkpoint: none yet")
    conv = status.conversion
    if conv:
        verdict = "passed" if conv.get("passed") else "FAILED"
        console.print(f"converted model: {conv.get('model_dir')} (verification {verdict}, max diff {conv.get('max_abs_diff')})")
    else:
        console.print("converted model: not yet")


def _print_progress(console: Any, status: RunStatus) -> None:
    """`progress: step 120/200, loss 5.989 at step 120, 186.6 samples/s, ETA 0:00:06 (attempt-..., 1 node, train)`
    and one `waiting on:` line per thing the run waits for."""
    from rich.markup import escape

    p = status.progress
    if p.get("step") is not None:
        parts = [f"step {p['step']}" + (f"/{p['max_steps']}" if p.get("max_steps") else "")]
        if p.get("loss") is not None:
            parts.append(f"loss {p['loss']:.6f} at step {p['loss_step']}")
        if p.get("samples_per_s") is not None:
            parts.append(f"{p['samples_per_s']:.1f} samples/s")
        if p.get("eta_s") is not None:
            parts.append(f"ETA {pg.fmt_duration(p['eta_s'])}")
        where = ", ".join(str(x) for x in (p.get("attempt"), p.get("nodes") and f"{p['nodes']} node(s)",
                                          p.get("phase")) if x)
        console.print(escape(f"progress: {', '.join(parts)} ({where}); {p['steps_lost']} step(s) computed again "
                             f"after resumes"), highlight=False)
    for line in status.waiting:
        console.print(f"[yellow]waiting on[/yellow]: {escape(line)}", highlight=False)


def _print_watchdog(console, view: Optional[Dict[str, Any]]) -> None:
    """Hung ranks and stragglers the hang watchdog saw last (nothing when it saw neither)."""
    from rich.markup import escape

    from .launch.watchdog import Hung, Straggler

    if not view or not (view["hung"] or view["stragglers"]):
        return
    when = f"hang watchdog, {view['attempt']}, {_fmt_age(view['age_s'])}"
    for key, record, label in (("hung", Hung, "[red]HUNG[/red]"), ("stragglers", Straggler, "[yellow]WARNING[/yellow] straggler")):
        for entry in view[key]:
            try:
                text = record(**entry).describe()
            except TypeError:  # a watchdog.json from another version: show it as it is
                text = str(entry)
            console.print(f"{label} {escape(text)} ({escape(when)})", highlight=False)


def _fmt_age(seconds: float) -> str:
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago" if seconds < 7200 \
        else f"{seconds / 3600:.0f} h ago"


def _fmt_time(value: Any) -> str:
    """sacct's layout: a run of several days needs the date too."""
    if isinstance(value, (int, float)):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(value))
    return str(value or "")


def log_files(run: RunDir) -> List[Path]:
    """Slurm outputs of every job (the local backend's: logs/local<pid>.out), then the trainers' workerlog.N and
    the node launchers' launcher.log of every attempt, then the trainers' Python stacks the hang watchdog
    recorded, each group sorted by path.

    Not paddle's own pod log, envlog.N or backup_env.N.json: they hold the launcher's whole environment."""
    files = sorted(p for p in run.slurm.rglob("*") if p.is_file() and p.suffix in (".out", ".err"))
    files += sorted(p for p in run.logs.glob("local*.out") if p.is_file())
    files += sorted(p for p in run.logs.rglob("workerlog.*") if p.is_file())
    files += sorted(p for p in run.logs.rglob("launcher.log") if p.is_file())
    files += sorted(p for p in run.logs.rglob("stacks.rank*.txt") if p.is_file() and _holds_stacks(p))
    return files


def _holds_stacks(path: Path) -> bool:
    """A trainer's stack file once the hang watchdog asked for a dump (before that: a header line only)."""
    try:
        return "most recent call first" in path.read_text(errors="replace")
    except OSError:
        return False


def show_logs(run: RunDir, *, follow: bool = False, lines: int = 40, out=sys.stdout) -> None:
    positions: Dict[Path, int] = {}
    for path in log_files(run):
        text = path.read_text(errors="replace")
        tail = text.splitlines()[-lines:]
        out.write(f"==> {path.relative_to(run.root)} <==\n" + "\n".join(tail) + "\n")
        positions[path] = len(text.encode())
    out.flush()
    while follow:
        time.sleep(1.0)
        for path in log_files(run):
            size = path.stat().st_size
            start = positions.get(path, 0)
            if size > start:
                with open(path, "rb") as f:
                    f.seek(start)
                    chunk = f.read().decode(errors="replace")
                out.write(f"==> {path.relative_to(run.root)} <==\n{chunk}")
                out.flush()
                positions[path] = size


def _scancel(job_ids: List[str], *, sig: Optional[str] = None) -> None:
    """scancel, its messages left on the terminal; its refusals are ignored, but one that could not run
    (not on PATH, or hung past the timeout) stops the cancel loudly rather than report jobs as cancelled."""
    out = slurm.scancel(job_ids, signal=sig, capture=False)
    if isinstance(out, slurm.NoAnswer):
        raise OSError(f"scancel did not answer: {out.reason}")


def cancel_run(run: RunDir, *, grace_s: float = 180.0, log=lambda message: None) -> List[str]:
    """Stop a run. Slurm: cancel the conversion; ask running training to checkpoint and stop (USR2 to its
    steps, recorded as cancelled: no requeue), wait up to `grace_s` for that, then scancel what is left.
    A plain scancel would not do: its TERM reaches paddle's launcher too, which kills the trainers at once.
    Local: record the cancel and TERM the supervisor, which passes it on as a stop and does not restart."""
    state = run.read_state()
    done = []
    if state.get("backend") == "local":
        pid = state.get("supervisor_pid")
        if pid:
            run.request_cancel(f"local{pid}")  # the node launcher reads it: the attempt is `cancelled`
            try:
                os.kill(int(pid), signal.SIGTERM)
                done.append(f"local supervisor {pid}")
            except ProcessLookupError:
                pass
        return done
    ids = run.job_ids(state)
    if "convert" in ids:
        _scancel([ids["convert"]])
        done.append(ids["convert"])
    if "train" not in ids:
        return done
    train_id = ids["train"]
    run.request_cancel(train_id)  # the launchers read it: no requeue
    if grace_s > 0 and slurm_jobs([train_id]).get(train_id, ("", ""))[0] == "RUNNING":
        _stop_training(run, train_id, grace_s, log)
    _scancel([train_id])
    done.append(train_id)
    return done


def _stop_training(run: RunDir, train_id: str, grace_s: float, log) -> None:
    """USR2 to the running training job's steps; wait up to `grace_s` for its attempt to end."""
    before = len(run.read_attempts())
    _scancel([train_id], sig="USR2")
    log(f"asked training job {train_id} to checkpoint and stop (up to {grace_s:.0f}s)")
    deadline = time.time() + grace_s
    while time.time() < deadline:
        if len(run.read_attempts()) > before or slurm_jobs([train_id]).get(train_id, ("", ""))[0] != "RUNNING":
            break
        time.sleep(1.0)
    attempts = run.read_attempts()[before:]
    if attempts:
        last = attempts[-1]
        log(f"training stopped at step {last.get('step')} ({last.get('cause') or last.get('reason')})")
