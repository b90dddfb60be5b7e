"""Shared pieces of the benchmarks: the result row, timing, machine description, the table, the module CLI.

Every benchmark module `bench/bench_<name>.py` follows one protocol:

    from bench.common import make_row, measure, module_main

    def run(quick: bool) -> list[dict]:
        ...                       # measure the figure AND its baseline in this same run
        return [make_row(...), ...]

    if __name__ == "__main__":
        raise SystemExit(module_main(run))

so that `python -m bench.bench_<name> [--quick] [--json OUT]` runs it alone, and `python -m bench` runs it in a
subprocess of its own. `run` may raise `Skip("why")` when something it needs is missing here (no Slurm, no GPU...).

A row (see `make_row`):
    name             short identifier of the figure, e.g. "render_cli_s"
    value            the measured figure (median of `runs`); None when it could not be measured
    unit             "s", "samples/s", "x", ...
    baseline         text: what `value` is compared with (measured in the same run)
    baseline_value   the baseline's figure, same unit
    ratio            value / baseline_value (always this direction)
    higher_is_better True when a larger value (and so a larger ratio) is better
    goal             text, e.g. "< 0.5 s" or ">= 20x baseline"
    goal_met         True / False / None (no goal, or not measurable)
    runs             the raw repeats the median was taken from
    spread           {"min", "max", "iqr"} of `runs`
    machine          short text: where it was measured
optional: note (free text), status ("ok" | "failed" | "skipped"), module (set by the harness), error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from ernie_cluster import slurm  # every Slurm command of the benchmarks goes through it

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
RESULTS_DIR = BENCH_DIR / "results"

ROW_KEYS = ("name", "value", "unit", "baseline", "baseline_value", "ratio", "higher_is_better", "goal",
            "goal_met", "runs", "spread", "machine")


class Skip(Exception):
    """Raised by a module's run() when something it needs is not available here; the message says what."""


# ------------------------------------------------------------------ timing ---

def summarize(samples: Sequence[float]) -> Dict[str, Any]:
    """Median, raw runs and spread (min, max, interquartile range) of some samples."""
    runs = [float(s) for s in samples]
    if not runs:
        raise ValueError("no samples")
    if len(runs) >= 2:
        q = statistics.quantiles(runs, n=4, method="inclusive")
        iqr = q[2] - q[0]
    else:
        iqr = 0.0
    return {"median": statistics.median(runs), "runs": runs,
            "spread": {"min": min(runs), "max": max(runs), "iqr": iqr}}


def measure(fn: Callable[..., Any], repeats: int = 5, warmup: int = 1,
            setup: Optional[Callable[[], Any]] = None) -> Dict[str, Any]:
    """Wall time of `fn()` over `repeats` runs after `warmup` untimed ones: {"median", "runs", "spread"}.

    `setup`, when given, runs untimed before every call and its result is passed to `fn`.
    If `fn` returns a number, that number is taken as the sample instead of the wall time
    (for callers that time a part of what they do themselves).
    """
    samples: List[float] = []
    for i in range(warmup + repeats):
        args = (setup(),) if setup is not None else ()
        t0 = time.perf_counter()
        result = fn(*args)
        elapsed = time.perf_counter() - t0
        if i >= warmup:
            samples.append(float(result) if isinstance(result, (int, float)) and not isinstance(result, bool) else elapsed)
    return summarize(samples)


def time_process(cmd: Sequence[str], *, env: Optional[Mapping[str, str]] = None, cwd: Optional[Path] = None,
                 timeout: float = 120) -> float:
    """Wall time of one fresh process; raises RuntimeError when it does not exit 0."""
    t0 = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=str(cwd or REPO), env=dict(env) if env is not None else None,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return elapsed


# ----------------------------------------------------------------- machine ---

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _gpus() -> List[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


@lru_cache(maxsize=1)
def machine_info() -> Dict[str, Any]:
    """Where the figures come from. Never imports paddle (versions come from the installed metadata)."""
    paddle = _version("paddlepaddle") or _version("paddlepaddle-gpu")
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_gib": _mem_gib(),
        "gpus": _gpus(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "paddle": paddle,
        "paddlenlp": _version("paddlenlp"),
        "hostname": platform.node(),
    }


def machine_summary(info: Optional[Mapping[str, Any]] = None) -> str:
    """One short line, e.g. 'AMD EPYC, 2 cores, 23.5 GiB, py 3.11.7, paddle 2.6.2'."""
    info = info or machine_info()
    cpu = " ".join(str(info.get("cpu") or "?").replace("(R)", "").replace("(TM)", "").split())
    parts = [cpu, f"{info.get('usable_cores') or info.get('cores')} cores"]
    if info.get("mem_gib"):
        parts.append(f"{info['mem_gib']} GiB")
    if info.get("gpus"):
        gpus = list(info["gpus"])
        parts.append(f"{len(gpus)}x {gpus[0]}")
    parts.append(f"py {info.get('python')}")
    if info.get("paddle"):
        parts.append(f"paddle {info['paddle']}")
    return ", ".join(parts)


def load_avg() -> Optional[List[float]]:
    """1/5/15-minute load average: other work on the machine while a figure was taken."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def git_commit(repo: Path = REPO) -> Dict[str, Any]:
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", *args], cwd=str(repo), capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


# ------------------------------------------------------------------- slurm ---

def slurm_env(base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment with SLURM_CONF pointing at the local cluster of scripts/local-slurm when it is unset there."""
    env = dict(os.environ if base is None else base)
    if not env.get("SLURM_CONF"):
        state = Path(env.get("ERNIE_SLURM_DIR") or REPO / ".cluster")
        conf = state / "etc" / "slurm.conf"
        if conf.is_file():
            env["SLURM_CONF"] = str(conf)
    return env


def slurm_answered(out: slurm.Answer) -> slurm.Reply:
    """Slurm's reply; a benchmark stops when Slurm does not answer (a missing or hung tool)."""
    if isinstance(out, slurm.NoAnswer):
        raise RuntimeError(f"{out.args[0]} did not answer: {out.reason}")
    return out


def slurm_available(env: Optional[Mapping[str, str]] = None, timeout: float = 10) -> Optional[str]:
    """None when a Slurm controller answers `sinfo` here; else why not."""
    env = slurm_env(env)
    if not shutil.which("sinfo", path=env.get("PATH")):
        return "no sinfo on PATH (Slurm client not installed)"
    out = slurm.call(["sinfo", "-h", "-o", "%R"], timeout=timeout, env=env)
    if not out.answered:
        return f"sinfo did not answer: {out.error}"
    if not out.ok:
        tail = out.error.splitlines()[-1:] or [""]
        hint = "" if env.get("SLURM_CONF") else " (SLURM_CONF unset; start the local cluster: scripts/local-slurm start)"
        return f"sinfo failed: {tail[0]}{hint}"
    return None


# -------------------------------------------------------------------- rows ---


def slurm_cluster_env() -> Dict[str, str]:
    """The local cluster's Slurm environment, with this checkout importable by its jobs; Skip without a controller."""
    env = slurm_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    problem = slurm_available(env)
    if problem:
        raise Skip(f"needs a Slurm controller: {problem}")
    return env

def make_row(name: str, value: Optional[float], unit: str, *, baseline: str = "", baseline_value: Optional[float] = None,
             higher_is_better: bool = False, goal: str = "", goal_met: Optional[bool] = None,
             runs: Optional[Sequence[float]] = None, spread: Optional[Mapping[str, float]] = None,
             machine: Optional[str] = None, note: str = "", **extra: Any) -> Dict[str, Any]:
    """A result row; ratio = value / baseline_value is filled in here."""
    ratio = None
    if value is not None and baseline_value:
        ratio = value / baseline_value
    row = {
        "name": name, "value": value, "unit": unit, "baseline": baseline, "baseline_value": baseline_value,
        "ratio": ratio, "higher_is_better": bool(higher_is_better), "goal": goal,
        "goal_met": None if goal_met is None else bool(goal_met),
        "runs": list(runs or []), "spread": dict(spread or {}), "machine": machine or machine_summary(),
    }
    if note:
        row["note"] = note
    row.update(extra)
    return row


def row_from_measure(name: str, m: Mapping[str, Any], unit: str, **kw: Any) -> Dict[str, Any]:
    """make_row from a `measure`/`summarize` result."""
    return make_row(name, m["median"], unit, runs=m["runs"], spread=m["spread"], **kw)


def status_row(name: str, status: str, message: str, **extra: Any) -> Dict[str, Any]:
    """A row for a module that failed or was skipped: no value, `goal_met` False for failures, None for skips."""
    row = make_row(name, None, "", goal_met=False if status == "failed" else None, note=message, **extra)
    row["status"] = status
    if status == "failed":
        row["error"] = message
    return row


def normalize_row(row: Mapping[str, Any]) -> Dict[str, Any]:
    """Fill keys a module left out, so the table and the report can rely on them."""
    out = dict(row)
    for key in ROW_KEYS:
        out.setdefault(key, None)
    out["runs"] = list(out.get("runs") or [])
    out["spread"] = out.get("spread") if out.get("spread") is not None else {}
    out.setdefault("status", "ok")
    if out.get("ratio") is None and isinstance(out.get("value"), (int, float)) and out.get("baseline_value"):
        out["ratio"] = out["value"] / out["baseline_value"]
    if not out.get("machine"):
        out["machine"] = machine_summary()
    return out


# ------------------------------------------------------------- formatting ---

def fmt_num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if x == 0:
        return "0"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    if ax >= 0.001:
        return f"{x:.3g}"
    return f"{x:.2e}"


def fmt_value(row: Mapping[str, Any], *, spread: bool = True) -> str:
    if row.get("value") is None:
        return str(row.get("status") or "-")
    text = f"{fmt_num(row['value'])} {row.get('unit') or ''}".strip()
    sp = row.get("spread") or {}
    if spread and len(row.get("runs") or []) > 1 and "min" in sp and "max" in sp:
        text += f" ({fmt_num(sp['min'])}–{fmt_num(sp['max'])})"
    return text


def fmt_baseline(row: Mapping[str, Any]) -> str:
    text = row.get("baseline") or ""
    if row.get("baseline_value") is not None:
        text = f"{text}: {fmt_num(row['baseline_value'])} {row.get('unit') or ''}".strip()
    return text or "-"


def fmt_ratio(row: Mapping[str, Any]) -> str:
    if row.get("ratio") is None:
        return "-"
    return f"{fmt_num(row['ratio'])}x ({'higher' if row.get('higher_is_better') else 'lower'} is better)"


def fmt_met(row: Mapping[str, Any]) -> str:
    met = row.get("goal_met")
    if row.get("status") == "failed":
        return "FAILED"
    if row.get("status") == "skipped":
        return "skipped"
    return "-" if met is None else ("yes" if met else "NO")


def print_table(rows: Iterable[Mapping[str, Any]], *, title: Optional[str] = None, console: Any = None) -> None:
    """One rich table: figure, value (min–max), baseline, ratio, goal, met?, machine; notes below it."""
    from rich.console import Console
    from rich.table import Table

    rows = [normalize_row(r) for r in rows]
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or logged: do not fold the table into 80 columns
            console = Console(width=220)
    table = Table(title=title, show_lines=False)
    for col in ("figure", "value (min–max)", "baseline (same run)", "ratio", "goal", "met?", "machine"):
        table.add_column(col, overflow="fold")
    notes = []
    for row in rows:
        name = row["name"] if not row.get("module") or str(row["name"]).startswith(row["module"]) else f"{row['module']}: {row['name']}"
        met = fmt_met(row)
        style = {"yes": "green", "NO": "red", "FAILED": "bold red", "skipped": "yellow"}.get(met, "")
        table.add_row(name, fmt_value(row), fmt_baseline(row), fmt_ratio(row), row.get("goal") or "-",
                      f"[{style}]{met}[/]" if style else met, row.get("machine") or "-")
        if row.get("note"):
            notes.append(f"{name}: {row['note']}")
    console.print(table)
    for note in notes:
        console.print(f"  note: {note}", highlight=False, markup=False)


# --------------------------------------------------------------- module CLI ---

def write_json(path: Path, payload: Any) -> None:
    """Write atomically (a *.tmp beside it, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def module_main(run: Callable[[bool], List[Dict[str, Any]]], argv: Optional[List[str]] = None,
                name: Optional[str] = None) -> int:
    """Stand-alone CLI of a benchmark module: `--quick`, `--json OUT`. Exit 0 also when skipped (the JSON says so)."""
    name = name or Path(sys.argv[0]).stem
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}")
    parser.add_argument("--quick", action="store_true", help="fewer repeats / smaller sizes (the harness's --quick)")
    parser.add_argument("--json", metavar="OUT", help="write {module, rows, machine, skipped} here")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    skipped = None
    try:
        rows = [normalize_row(r) for r in run(args.quick)]
    except Skip as exc:
        skipped, rows = str(exc), []
    payload = {"module": name, "quick": args.quick, "skipped": skipped, "seconds": time.perf_counter() - t0,
               "machine": machine_info(), "load_avg_after": load_avg(), "rows": rows}
    if skipped:
        print(f"{name}: skipped: {skipped}")
    else:
        print_table(rows, title=f"{name}{' (quick)' if args.quick else ''}")
    if args.json:
        write_json(Path(args.json), payload)
    return 0
