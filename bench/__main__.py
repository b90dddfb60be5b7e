"""`python -m bench [--quick] [--only NAME,...] [--json OUT]`: run every benchmark module, one subprocess each.

A module that crashes, hangs past its time limit or writes no result becomes a failed row; the others still run.
A module that is not written yet, or needs what this machine lacks (bench_preempt: a Slurm controller), is
skipped with a note. One table is printed; all rows + machine + timestamp + git commit go to the JSON
(default bench/results/latest.json), which `python -m bench.report` turns into the README table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .common import (BENCH_DIR, REPO, RESULTS_DIR, git_commit, load_avg, machine_info, machine_summary, normalize_row,
                     print_table, slurm_available, slurm_env, status_row, write_json)

# Run in this order; any other bench_*.py found in the modules directory runs after these.
KNOWN_MODULES = ("bench_data", "bench_train", "bench_submit", "bench_preempt", "bench_hang")
# What a module needs beyond Python; checked here so that a missing piece is a clear skip, not a failure.
# (bench_hang and bench_elastic, found after these, need Slurm too and say so themselves with Skip.)
NEEDS = {"bench_preempt": ("slurm",)}
QUICK_BUDGET_S = 290.0        # --quick: all modules together stay under 5 minutes
QUICK_MODULE_TIMEOUT_S = 150.0
# --quick limits of modules that cannot fit QUICK_MODULE_TIMEOUT_S (still within what is left of QUICK_BUDGET_S;
# --timeout overrides): bench_hang waits out a 2-minute Slurm time limit, then a requeue and a fresh start-up;
# bench_elastic runs two jobs one after the other, each through a 60 s hold of one node.
QUICK_MODULE_TIMEOUTS = {"bench_hang": 280.0, "bench_elastic": 285.0}
# What a module needs at least to give a figure; with less of the --quick budget left it is skipped (run it with
# --only), not started only to be stopped as a failure (bench_ckpt: tiny and ERNIE-base-sized checkpoints, ~75 s).
QUICK_MODULE_MIN_S = {"bench_ckpt": 100.0, "bench_elastic": 200.0}
FULL_MODULE_TIMEOUT_S = 3600.0


def discover(modules_dir: Path) -> List[str]:
    found = sorted(p.stem for p in modules_dir.glob("bench_*.py"))
    return [m for m in KNOWN_MODULES] + [m for m in found if m not in KNOWN_MODULES]


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


def _failed(name: str, msg: str, info: Dict[str, Any]) -> Tuple[str, List[Dict[str, Any]], Dict[str, Any]]:
    return "failed", [status_row(name, "failed", msg)], {**info, "error": msg}


def _communicate(proc: subprocess.Popen, timeout: float) -> Tuple[str, str, bool]:
    """(stdout, stderr, timed out) of a child that leads its own session; past `timeout` it is stopped
    (TERM, then KILL) with whatever it started, by that group id."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        return stdout, stderr, False
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = proc.communicate()
    return stdout, stderr, True


def run_module(name: str, *, modules_dir: Path, quick: bool, timeout: float, env: Dict[str, str],
               verbose: bool = False) -> Tuple[str, List[Dict[str, Any]], Dict[str, Any]]:
    """Run one module in its own process. Returns (status, rows, info); never raises for the module's faults."""
    default_dir = modules_dir.resolve() == BENCH_DIR.resolve()
    target = f"bench.{name}" if default_dir else name
    child_env = dict(env)
    paths = [str(REPO)] if default_dir else [str(modules_dir.resolve()), str(REPO)]
    if child_env.get("PYTHONPATH"):
        paths.append(child_env["PYTHONPATH"])
    child_env["PYTHONPATH"] = os.pathsep.join(paths)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        out_json = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", target, "--json", str(out_json)] + (["--quick"] if quick else [])
        load_before = load_avg()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=str(REPO), env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        stdout, stderr, timed_out = _communicate(proc, timeout)
        seconds = time.perf_counter() - t0
        info: Dict[str, Any] = {"seconds": round(seconds, 2), "returncode": proc.returncode, "command": " ".join(cmd),
                                "load_avg_before": load_before, "load_avg_after": load_avg()}
        if verbose:
            sys.stdout.write(stdout)
            sys.stderr.write(stderr)
        if timed_out:
            return _failed(name, f"timed out after {timeout:.0f} s and was stopped; last output: "
                                 f"{_tail(stderr or stdout, 6)}", info)
        if proc.returncode != 0:
            return _failed(name, f"exited {proc.returncode}: {_tail(stderr or stdout)}", info)
        try:
            payload = json.loads(out_json.read_text())
        except (OSError, ValueError) as exc:
            return _failed(name, f"exited 0 but wrote no readable result JSON ({type(exc).__name__}); was it "
                                 f"written with bench.common.module_main?", info)
    return _module_rows(name, payload, info)


def _module_rows(name: str, payload: Any, info: Dict[str, Any]) -> Tuple[str, List[Dict[str, Any]], Dict[str, Any]]:
    """(status, rows, info) from the JSON a module wrote."""
    if isinstance(payload, list):
        payload = {"rows": payload}
    if payload.get("skipped"):
        return "skipped", [status_row(name, "skipped", f"skipped: {payload['skipped']}")], {**info, "note": payload["skipped"]}
    rows = []
    for row in payload.get("rows") or []:
        if not isinstance(row, dict) or "name" not in row:
            return _failed(name, f"returned a row that is not a dict with a name: {row!r:.200}", info)
        rows.append(normalize_row(row))
    if not rows:
        return _failed(name, "returned no rows", info)
    return "ok", rows, info


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"each module's quick mode; whole run kept under {QUICK_BUDGET_S:.0f} s")
    parser.add_argument("--only", metavar="NAME,...", help="run just these modules (bench_ prefix optional)")
    parser.add_argument("--json", metavar="OUT", default=str(RESULTS_DIR / "latest.json"),
                        help="where to write all rows (default %(default)s); '' to write nothing")
    parser.add_argument("--modules-dir", metavar="DIR", default=str(BENCH_DIR),
                        help="where the bench_*.py modules live (default: bench/)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help=f"per-module limit (default {QUICK_MODULE_TIMEOUT_S:.0f} s with --quick, {FULL_MODULE_TIMEOUT_S:.0f} s without)")
    parser.add_argument("--verbose", "-v", action="store_true", help="show each module's own output")
    return parser.parse_args(argv)


class _Needs:
    """Why a module cannot run here (NEEDS), each need checked once."""

    def __init__(self, env: Dict[str, str]):
        self.env = env
        self.slurm_problem: Optional[str] = None
        self.checked = False

    def missing(self, name: str) -> Optional[str]:
        if "slurm" in NEEDS.get(name, ()):
            if not self.checked:
                self.slurm_problem, self.checked = slurm_available(self.env), True
            if self.slurm_problem:
                return f"needs Slurm: {self.slurm_problem}"
        return None


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse_args(argv)
    modules_dir = Path(args.modules_dir)
    names = discover(modules_dir)
    if args.only:
        names = [n.strip() if n.strip().startswith("bench_") else f"bench_{n.strip()}" for n in args.only.split(",")
                 if n.strip()]
    timeout = args.timeout or (QUICK_MODULE_TIMEOUT_S if args.quick else FULL_MODULE_TIMEOUT_S)
    deadline = time.monotonic() + QUICK_BUDGET_S if args.quick else None
    env = slurm_env()  # SLURM_CONF of the local cluster when the caller did not set one
    needs = _Needs(env)

    started = _dt.datetime.now(_dt.timezone.utc)
    rows: List[Dict[str, Any]] = []
    modules: Dict[str, Dict[str, Any]] = {}
    for name in names:
        note: Optional[str]
        if not (modules_dir / f"{name}.py").is_file():
            note = "not written yet" if name in KNOWN_MODULES else f"no {name}.py in {modules_dir}"
        else:
            note = needs.missing(name)
        limit = timeout if args.timeout or not args.quick else QUICK_MODULE_TIMEOUTS.get(name, timeout)
        if deadline is not None and deadline - time.monotonic() < limit:
            limit = deadline - time.monotonic()
            if note is None and limit < QUICK_MODULE_MIN_S.get(name, 10.0):
                note = (f"--quick time budget ({QUICK_BUDGET_S:.0f} s) spent by the modules before it "
                        f"(run it alone: bench/run --only {name.removeprefix('bench_')})")
        status, mod_rows, info = _one_module(name, note, args, modules_dir, limit, env)
        for row in mod_rows:
            row["module"] = name
        modules[name] = {"status": status, **info}
        rows.extend(mod_rows)
    return _report(args, started, modules, rows)


def _one_module(name: str, note: Optional[str], args: argparse.Namespace, modules_dir: Path, limit: float,
                env: Dict[str, str]) -> Tuple[str, List[Dict[str, Any]], Dict[str, Any]]:
    if note is not None:
        print(f"skipping {name}: {note}", flush=True)
        return "skipped", [status_row(name, "skipped", f"skipped: {note}")], {"note": note}
    print(f"running {name}{' --quick' if args.quick else ''} (limit {limit:.0f} s) ...", flush=True)
    status, mod_rows, info = run_module(name, modules_dir=modules_dir, quick=args.quick, timeout=limit,
                                        env=env, verbose=args.verbose)
    print(f"  {name}: {status}, {len(mod_rows)} row(s), {info.get('seconds', 0):.1f} s", flush=True)
    return status, mod_rows, info


def _report(args: argparse.Namespace, started: _dt.datetime, modules: Dict[str, Dict[str, Any]],
            rows: List[Dict[str, Any]]) -> int:
    """The table, the JSON; exit status 1 when a module failed."""
    total_s = (_dt.datetime.now(_dt.timezone.utc) - started).total_seconds()
    print()
    print_table(rows, title=f"ernie_cluster benchmarks{' (quick)' if args.quick else ''} — {machine_summary()}")
    print(f"total {total_s:.1f} s")
    result = {
        "timestamp": started.isoformat(timespec="seconds"),
        "seconds": round(total_s, 2),
        "quick": args.quick,
        "git": git_commit(),
        "machine": machine_info(),
        "machine_summary": machine_summary(),
        "modules": modules,
        "rows": rows,
    }
    if args.json:
        write_json(Path(args.json), result)
        print(f"wrote {args.json}")
    failed = [n for n, m in modules.items() if m["status"] == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
