"""The console of `submit` (local backend) and `status --follow`: one quiet view of a run while it runs, a short
summary when it ends. The detailed logs stay in the run directory (`logs/`, and `logs/local<pid>.out` for what
the local jobs print); the console reads the run directory through `watch.RunWatcher` and draws:

- on a terminal: a live panel (rich) with the attempt, its node count, step / max_steps, loss, samples/s,
  ETA, the last checkpoint and what the run waits on, and above it one event line per preemption, requeue,
  resume, checkpoint, conversion, failure or warning;
- when stdout is not a terminal (a pipe, a file, `TERM=dumb`): the same events as plain lines, and a progress
  line at most every `PROGRESS_EVERY_S` while training; no colour, no cursor movement;
- `submit --verbose`: the jobs' output as it is written (what the terminal showed before this console).

Polling reads a few small files `POLL_S` apart (`watch` says what and how often); it takes no lock the jobs use.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional

from . import progress as pg
from .rundir import RunDir
from .watch import Event, RunWatcher, summary_lines

POLL_S = 0.5
PROGRESS_EVERY_S = 5.0
STYLES = {"failed": "bold red", "error": "red", "hung": "bold red", "preempted": "yellow", "timeout": "yellow",
          "cancelled": "yellow", "requeue": "cyan", "resume": "cyan", "completed": "green", "converted": "green",
          "warning": "yellow", "straggler": "yellow", "node": "yellow", "nodes": "cyan", "signal": "yellow",
          "checkpoint": "blue"}


def stamp(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def event_line(event: Event) -> str:
    return f"{stamp(event.time)} {event.kind:<10} {event.text}"


def progress_line(figs: Dict[str, Any]) -> str:
    """`step 120/200 | loss 5.9890 | 186.6 samples/s | ETA 0:00:06 | attempt 1 on 1 node | checkpoint 100`."""
    of = f"/{figs['max_steps']}" if figs.get("max_steps") else ""
    parts = [f"step {figs['step'] if figs.get('step') is not None else '-'}{of}"]
    if figs.get("loss") is not None:  # the latest logged loss, with its step when that is not the step shown
        at = f" at step {figs['loss_step']}" if figs.get("loss_step") != figs.get("step") else ""
        parts.append(f"loss {figs['loss']:.4f}{at}")
    if figs.get("samples_per_s") is not None:
        parts.append(f"{figs['samples_per_s']:.1f} samples/s")
    parts.append(f"ETA {pg.fmt_duration(figs.get('eta_s'))}")
    if figs.get("index") is not None:
        nodes = figs.get("nodes")
        parts.append(f"attempt {figs['index']}" + (f" on {nodes} node{'s' if nodes != 1 else ''}" if nodes else ""))
    ckpt = figs.get("checkpoint")
    parts.append(f"checkpoint {ckpt['step']}" if ckpt else "no checkpoint yet")
    return " | ".join(parts)


class PlainView:
    """Plain lines: events as they come, a progress line for newly logged steps at most every `every_s`."""

    def __init__(self, out: IO[str], every_s: float = PROGRESS_EVERY_S):
        self.out, self.every_s = out, every_s
        self._last_at = float("-inf")
        self._last_step: Optional[int] = None
        self._shown = 0

    def start(self) -> None:
        pass

    def show(self, events: List[Event], figs: Dict[str, Any]) -> None:
        lines = [event_line(e) for e in events]
        step = figs.get("loss_step")
        first = self._shown == 0
        self._shown += 1
        if step is not None and step != self._last_step and figs.get("eta_s") is not None:
            now = time.monotonic()
            if not first and now - self._last_at >= self.every_s:  # the first poll replays: no stale progress
                lines.append(f"{stamp(time.time())} {'progress':<10} {progress_line(figs)}")
                self._last_at = now
            self._last_step = step
        self._write(lines)

    def close(self, summary: Optional[List[str]]) -> None:
        self._write(summary or [])

    def _write(self, lines: List[str]) -> None:
        if lines:
            self.out.write("".join(line + "\n" for line in lines))
            self.out.flush()


class LiveView:
    """A terminal: rich's Live panel under the event lines, replaced by the summary at the end."""

    def __init__(self, out: IO[str]):
        from rich.console import Console

        self.console = Console(file=out)
        self.live: Any = None

    def start(self) -> None:
        from rich.live import Live

        self.live = Live(console=self.console, refresh_per_second=4, transient=True)
        self.live.start()

    def show(self, events: List[Event], figs: Dict[str, Any]) -> None:
        from rich.text import Text

        for e in events:
            self.live.console.print(Text.assemble((stamp(e.time), "dim"), " ",
                                                  (f"{e.kind:<10}", STYLES.get(e.kind, "bold")), " ", e.text))
        self.live.update(self._panel(figs))

    def _panel(self, figs: Dict[str, Any]) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        nodes = figs.get("nodes")
        head = Text.assemble((str(figs.get("name") or ""), "bold"), "  ", (str(figs.get("state")), "cyan"))
        if figs.get("index") is not None:
            head.append(f"  attempt {figs['index']}" + (f" on {nodes} node{'s' if nodes != 1 else ''}" if nodes else "")
                        + f"  {figs.get('phase') or ''}")
        grid.add_row(head)
        total, step = figs.get("max_steps") or 0, figs.get("step") or 0
        if total:
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=total, completed=min(step, total), width=40),
                        Text(f"{step}/{total}  {100 * step / total:.0f}%"))
            grid.add_row(bar)
        grid.add_row(Text(progress_line(figs), style="dim"))
        for line in figs.get("waiting") or []:
            grid.add_row(Text(f"waiting: {line}", style="yellow"))
        return grid

    def close(self, summary: Optional[List[str]]) -> None:
        if self.live is not None:
            self.live.stop()
        for line in summary or []:
            self.console.print(line, highlight=False, markup=False)


class VerboseView:
    """`--verbose`: the jobs' output file streamed as it grows, then the summary."""

    def __init__(self, out: IO[str], path: Path):
        self.out, self.tail = out, pg.LogTail(path)

    def start(self) -> None:
        pass

    def show(self, events: List[Event], figs: Dict[str, Any]) -> None:
        lines = self.tail.read()
        if lines:
            self.out.write("".join(line + "\n" for line in lines))
            self.out.flush()

    def close(self, summary: Optional[List[str]]) -> None:
        self.show([], {})
        PlainView(self.out).close(summary)


def is_terminal(out: IO[str]) -> bool:
    return bool(getattr(out, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"


def make_view(out: IO[str], verbose_file: Optional[Path] = None) -> Any:
    if verbose_file is not None:
        return VerboseView(out, verbose_file)
    return LiveView(out) if is_terminal(out) else PlainView(out)


def _step(watcher: RunWatcher, view: Any, *, force: bool = False) -> None:
    """One poll drawn. A failure to draw is said once on stderr and the view goes on: the run must not notice."""
    try:
        events = watcher.poll(force=force)
        view.show(events, watcher.figures())
    except Exception as exc:  # noqa: BLE001 - e.g. a text the terminal's encoding cannot show
        if not getattr(view, "failed", False):
            view.failed = True
            print(f"ernie_cluster console: cannot show the run ({type(exc).__name__}: {exc}); it goes on, its logs "
                  f"are in {watcher.run.logs}", file=sys.__stderr__, flush=True)


def _close(view: Any, watcher: Optional[RunWatcher], final: Optional[str] = None) -> None:
    """The view ended, with the summary when there is a run to sum up."""
    try:
        view.close(summary_lines(watcher.summary(final)) if watcher is not None else None)
    except Exception as exc:  # noqa: BLE001 - the run's outcome stands; only its summary could not be shown
        print(f"ernie_cluster console: cannot show the summary ({type(exc).__name__}: {exc})", file=sys.__stderr__)


def follow_run(run: RunDir, *, out: Optional[IO[str]] = None, poll_s: float = POLL_S) -> int:
    """`status --follow`: the view until the run ends (0 when it completed, 1 otherwise), then the summary."""
    watcher = RunWatcher(run)
    view = make_view(out or sys.stdout)
    view.start()
    final: Optional[str] = None
    try:
        while True:
            _step(watcher, view)
            final = watcher.finished()
            if final:
                break
            time.sleep(poll_s)
        _step(watcher, view, force=True)
    finally:
        _close(view, watcher, final)
    return 0 if final == "COMPLETED" else 1


@contextmanager
def watching_local_submit(run_dir: Path, *, verbose: bool = False, out: Optional[IO[str]] = None,
                          poll_s: float = POLL_S) -> Iterator[None]:
    """The console of a local `submit` in this process: a thread follows the run directory from the moment this
    submission's state.json is written (an older run there may be moved aside first) until the block ends,
    when the last events and the summary are printed. The supervisor keeps the main thread (its signals)."""
    from .local import output_file

    run, pid = RunDir(Path(run_dir)), os.getpid()
    view = make_view(out or sys.stdout, output_file(run, f"local{pid}") if verbose else None)
    stop = threading.Event()
    holder: Dict[str, RunWatcher] = {}

    def ours() -> bool:
        try:
            return run.read_state().get("supervisor_pid") == pid
        except (OSError, ValueError):
            return False

    def loop() -> None:
        while not ours():
            if stop.wait(0.1):
                return
        holder["watcher"] = watcher = RunWatcher(run)
        view.start()
        while True:
            _step(watcher, view)
            if stop.wait(poll_s):
                return

    thread = threading.Thread(target=loop, name="ernie-console", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        watcher = holder.get("watcher")
        if watcher is None and ours():  # the run ended before the thread saw it start
            holder["watcher"] = watcher = RunWatcher(run)
            view.start()
        if watcher is not None:
            _step(watcher, view, force=True)
        _close(view, watcher)
