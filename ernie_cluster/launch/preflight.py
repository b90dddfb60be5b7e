"""Pre-flight of one node before its trainers start: a bad node is reported by name, not found later as a hang.

`run_preflight` runs four checks and returns a `PreflightReport` (one `Check` each):

  python  the trainers' interpreter, in the trainers' environment, imports paddle, paddlenlp, ernie_cluster and
          the compiled data_tools._helpers; on GPU runs paddle must be built with CUDA and see the GPUs.
          ONE subprocess for all of it: importing paddle takes seconds and paddlenlp more, so it starts first
          and runs while the other checks do
  gpus    `nvidia-smi` lists the GPUs the allocation promises, counted through $CUDA_VISIBLE_DEVICES as CUDA
          counts them; skipped on CPU runs (reported as skipped, not as passed)
  rundir  a probe file (named after the host, so nodes never collide) is created, fsynced and removed in the
          run directory and in checkpoints/ when it exists
  disk    the checkpoints' filesystem has room for two checkpoints (a save writes a complete temp copy before
          the oldest is pruned) plus a margin

Every failure says what is wrong and how to fix it. `Check.scope` says whose fault it likely is: "node" (this
machine: its driver, GPUs, local libraries, a read-only or stale mount) or "run" (the shared run directory, a
missing package of a shared environment: the same on every node). `judge_nodes` reads every node's report and
tells the hosts to exclude from a requeue from the failures a requeue would only repeat. The checks themselves
live in `preflight_checks`; this module puts them together.

The node launcher runs it on every node after building the trainers' command and before the data (skipped
with ERNIE_CLUSTER_PREFLIGHT=0), writes the report to node<k>/preflight.json (`write_report`), and node 0
judges every node's (`read_reports`, `judge_nodes`): a failed node is named in the attempt record and left out
of the requeued job, instead of being found later as a hang.

Standard library only (the node launcher imports it); `ernie_num_params` and `spec_checkpoint_bytes` import
ernie_cluster's paddle-free shape tables when called. By hand on a suspect node:
    srun -w NODE python -m ernie_cluster.launch.preflight --run-dir RUN
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .preflight_checks import (AMP_STATE_BYTES, BYTES_PER_PARAM, CHECKPOINT_COPIES, CHECKPOINT_FIXED_BYTES,
                               DEFAULT_TIMEOUT_S, DISK_MARGIN_BYTES, GIB, IMPORTS, NVIDIA_SMI_TIMEOUT_S, Check,
                               check_disk, check_gpus, check_writable, ernie_num_params, estimate_checkpoint_bytes,
                               finish_imports, judge_imports, kill_session, parse_nvidia_smi, spec_checkpoint_bytes,
                               start_imports, visible_gpus)

ENABLE_ENV = "ERNIE_CLUSTER_PREFLIGHT"  # "0": the node launcher skips the pre-flight
TIMEOUT_ENV = "ERNIE_CLUSTER_PREFLIGHT_TIMEOUT_S"  # the import subprocess's limit (DEFAULT_TIMEOUT_S)
TEST_FAIL_ENV = "ERNIE_CLUSTER_TEST_PREFLIGHT_FAIL"  # test hook, see `injected_failure`
REPORT_FILE = "preflight.json"  # in the attempt's node<k>/ directory

__all__ = ["AMP_STATE_BYTES", "BYTES_PER_PARAM", "CHECKPOINT_COPIES", "CHECKPOINT_FIXED_BYTES", "DEFAULT_TIMEOUT_S",
           "DISK_MARGIN_BYTES", "GIB", "IMPORTS", "NVIDIA_SMI_TIMEOUT_S", "Check", "PreflightReport",
           "PreflightVerdict", "check_disk", "check_gpus", "check_writable", "ernie_num_params",
           "estimate_checkpoint_bytes", "finish_imports", "judge_imports", "judge_nodes", "main", "parse_nvidia_smi",
           "preflight_for_spec", "read_reports", "run_preflight", "spec_checkpoint_bytes", "visible_gpus",
           "injected_failure", "write_report", "failure_summaries", "ENABLE_ENV", "TIMEOUT_ENV", "TEST_FAIL_ENV",
           "REPORT_FILE"]


@dataclass
class PreflightReport:
    host: str
    python: str
    checks: List[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> List[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def node_fault(self) -> bool:
        """A failure this machine likely causes (its exclusion may help), judged from this node alone."""
        return any(c.scope == "node" for c in self.failures)

    def describe(self) -> str:
        """One line per check, each naming the host."""
        return "\n".join(f"preflight {self.host}: {c.line()}" for c in self.checks)

    def summary(self) -> str:
        """One line for the attempt's message: the host and what failed (or that all passed)."""
        if self.ok:
            return f"preflight passed on {self.host} in {self.seconds:.1f}s"
        return f"preflight failed on {self.host}: " + "; ".join(f"{c.name}: {c.detail}" for c in self.failures)

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict (node_result.json, the attempt record)."""
        return {"host": self.host, "python": self.python, "ok": self.ok, "seconds": round(self.seconds, 3),
                "checks": [dict(asdict(c), seconds=round(c.seconds, 3)) for c in self.checks]}


# ---------------------------------------------------------------------------------------- the whole check


def run_preflight(*, python: str, run_root: Path, gpus_expected: int, checkpoint_bytes_estimate: int, host: str,
                  timeout_s: float = DEFAULT_TIMEOUT_S, env: Optional[Mapping[str, str]] = None,
                  modules: Sequence[str] = IMPORTS, cwd: Optional[Path] = None) -> PreflightReport:
    """Check this node before its trainers start; never raises for what it finds.

    `python` and `env`: the trainers' interpreter and environment (default: this process's), which may differ
    from the launcher's; `checkpoint_bytes_estimate`: `estimate_checkpoint_bytes` (0: unknown, only the margin
    is required); `timeout_s`: for the import subprocess; `cwd`: its working directory (default: this one, which
    the trainers inherit too: `python -m` puts it first on sys.path)."""
    t0 = time.perf_counter()
    env = dict(os.environ if env is None else env)
    run_root = Path(run_root)
    imports = start_imports(python, modules, gpus_expected, env, cwd)  # the slow one runs while the others do
    try:
        checks = [
            _timed(check_gpus, gpus_expected, env),
            _timed(check_writable, run_root, host),
            _timed(check_disk, run_root, checkpoint_bytes_estimate),
        ]
    except BaseException:  # a bug or an interrupt: leave no import subprocess behind
        if not isinstance(imports, Check):
            kill_session(imports)
        raise
    python_check = finish_imports(imports, python, gpus_expected, deadline=t0 + timeout_s, timeout_s=timeout_s)
    checks.insert(0, _with_seconds(python_check, time.perf_counter() - t0))  # the subprocess ran from t0
    return PreflightReport(host, python, checks, time.perf_counter() - t0)


def _timed(fn: Any, *args: Any) -> Check:
    t = time.perf_counter()
    check: Check = fn(*args)
    return _with_seconds(check, time.perf_counter() - t)


def _with_seconds(check: Check, seconds: float) -> Check:
    return Check(check.name, check.ok, check.detail, check.fix, check.skipped, check.scope, seconds)


def preflight_for_spec(spec: Any, run_root: Path, *, python: str, host: str, env: Optional[Mapping[str, str]] = None,
                       timeout_s: float = DEFAULT_TIMEOUT_S) -> PreflightReport:
    """`run_preflight` with what a JobSpec says: GPUs per node on GPU runs, the checkpoint estimate (0 when the
    model config cannot be read here; the disk check then says the size is unknown)."""
    gpus = spec.resources.trainers_per_node if spec.train.device == "gpu" else 0
    try:
        estimate = spec_checkpoint_bytes(spec)
    except Exception:  # noqa: BLE001 - an unreadable model config is the trainer's to report, with its reason
        estimate = 0
    return run_preflight(python=python, run_root=run_root, gpus_expected=gpus, checkpoint_bytes_estimate=estimate,
                         host=host, timeout_s=timeout_s, env=env)


# ------------------------------------------------------------------------------------------ every node


@dataclass(frozen=True)
class PreflightVerdict:
    exclude: List[str]  # hosts to leave out of the requeued job (ExcNodeList)
    everywhere: List[str]  # checks failed on every node: the environment or the run directory, not a node

    @property
    def retryable(self) -> bool:
        """A requeue without the excluded hosts may succeed; a failure on every node would only repeat."""
        return bool(self.exclude) and not self.everywhere


def judge_nodes(reports: Sequence[Mapping[str, Any]]) -> PreflightVerdict:
    """From every node's `PreflightReport.to_json()`: which hosts to exclude, which failures are no node's.

    With several nodes the comparison decides: a check that failed on every node is the environment's (no
    exclusion), one that failed on some nodes is theirs. A single node has only each failure's `scope`."""
    failed: Dict[str, List[Tuple[str, str]]] = {}  # check -> [(host, scope)]
    for report in reports:
        for check in report.get("checks", []):
            if not check.get("ok", True):
                failed.setdefault(str(check["name"]), []).append((str(report.get("host")), str(check.get("scope"))))
    n = len(reports)
    everywhere = sorted(name for name, hosts in failed.items()
                        if (n > 1 and len({h for h, _ in hosts}) >= n) or (n == 1 and hosts[0][1] == "run"))
    exclude = sorted({host for name, hosts in failed.items() if name not in everywhere for host, _ in hosts})
    return PreflightVerdict(exclude, everywhere)


def failure_summaries(reports: Sequence[Mapping[str, Any]]) -> Dict[str, str]:
    """host -> what its pre-flight found wrong (`PreflightReport.summary`'s words), for the failed reports."""
    out: Dict[str, str] = {}
    for report in reports:
        failed = [c for c in report.get("checks", []) if not c.get("ok", True)]
        if failed:
            host = str(report.get("host"))
            what = "; ".join(f"{c.get('name')}: {c.get('detail')}" for c in failed)
            out[host] = f"preflight failed on {host}: {what}"
    return out


def write_report(node_dir: Path, report: PreflightReport) -> None:
    """node<k>/preflight.json: this node's report, for node 0's `judge_nodes` and for people."""
    from ..rundir import write_atomic

    write_atomic(Path(node_dir) / REPORT_FILE, json.dumps(report.to_json(), indent=1, sort_keys=True) + "\n")


def read_reports(attempt_dir: Path, num_nodes: int) -> Dict[int, Dict[str, Any]]:
    """node rank -> that node's preflight.json in the attempt directory; nodes that wrote none are left out."""
    reports: Dict[int, Dict[str, Any]] = {}
    for k in range(num_nodes):
        try:
            data = json.loads((Path(attempt_dir) / f"node{k}" / REPORT_FILE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            reports[k] = data
    return reports


def injected_failure(env: Mapping[str, str], host: str, node_rank: int) -> Optional[Check]:
    """Test hook: $ERNIE_CLUSTER_TEST_PREFLIGHT_FAIL="NODE[:MARKER]" fails this node's pre-flight when NODE is
    its name or `node<rank>`; with MARKER only once (the marker file is created then). None otherwise."""
    node, _, marker = env.get(TEST_FAIL_ENV, "").partition(":")
    if not node or node not in (host, f"node{node_rank}"):
        return None
    if marker:
        try:  # O_EXCL: only the first attempt that gets here fails
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return None
        except OSError:
            pass
    return Check("injected", False, f"{TEST_FAIL_ENV} fails the pre-flight of {host} (a test)",
                 f"unset {TEST_FAIL_ENV}", scope="node")


# ---------------------------------------------------------------------------------------------- by hand


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m ernie_cluster.launch.preflight --run-dir RUN`: this node's pre-flight for a run; exit 0 or 1."""
    ap = argparse.ArgumentParser(prog="python -m ernie_cluster.launch.preflight", description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--python", default=None, help="the trainers' interpreter (default: the spec's, else this one)")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs expected (default: from RUN/spec.yaml, else 0)")
    ap.add_argument("--checkpoint-gib", type=float, default=None, help="one checkpoint's size (default: estimated)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    spec = None
    if (args.run_dir / "spec.yaml").is_file():
        from ..spec import load_frozen

        spec = load_frozen(args.run_dir / "spec.yaml")
    python = args.python or (spec.environment.python if spec is not None else None) or sys.executable
    gpus = args.gpus if args.gpus is not None else (
        spec.resources.trainers_per_node if spec is not None and spec.train.device == "gpu" else 0)
    if args.checkpoint_gib is not None:
        estimate = int(args.checkpoint_gib * GIB)
    else:
        try:
            estimate = spec_checkpoint_bytes(spec) if spec is not None else 0
        except Exception:  # noqa: BLE001
            estimate = 0
    report = run_preflight(python=python, run_root=args.run_dir, gpus_expected=gpus,
                           checkpoint_bytes_estimate=estimate, host=socket.gethostname(), timeout_s=args.timeout)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.describe())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
