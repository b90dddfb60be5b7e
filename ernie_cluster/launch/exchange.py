"""Node-to-node exchange through the attempt directory RUN/logs/attempt-<job>-<restart>/: each node's
node<k>/ (control/, node_result.json), node 0's attempt.json verdict; and node 0's Slurm actions."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from ..rundir import RunDir, write_atomic
from ..spec import JobSpec
from . import attempt as att
from .cluster_env import ClusterEnvironment

NODE_RESULT = "node_result.json"
ATTEMPT_DECISION = "attempt.json"  # node 0's verdict for the attempt, next to the node<k> directories
HANDLED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


def ignore_all_stop_signals() -> None:
    for sig in HANDLED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def open_node_dir(run: RunDir, cenv: ClusterEnvironment) -> Path:
    """This node's directory for the attempt, with an empty control/ and no node_result.json: the files of an
    earlier run of the same attempt are kept aside (renamed *.stale-<time>)."""
    node_dir = run.attempt_log_dir(cenv.job_id, cenv.restart_count, cenv.node_rank)
    control = node_dir / "control"
    node_dir.mkdir(parents=True, exist_ok=True)
    if control.exists() and any(control.iterdir()):  # same attempt run twice: keep the old files
        control.rename(node_dir / f"control.stale-{int(time.time())}")
    control.mkdir(parents=True, exist_ok=True)
    stale_result = node_dir / NODE_RESULT
    if stale_result.exists():
        stale_result.rename(node_dir / f"{NODE_RESULT}.stale-{int(time.time())}")
    return node_dir


def write_node_result(node_dir: Path, own: Dict[str, Any]) -> None:
    write_atomic(node_dir / NODE_RESULT, json.dumps(own, sort_keys=True) + "\n")


def write_decision(attempt_dir: Path, decision: Dict[str, Any]) -> None:
    write_atomic(attempt_dir / ATTEMPT_DECISION, json.dumps(decision, sort_keys=True) + "\n")


def failed_peer(attempt_dir: Path, cenv: ClusterEnvironment) -> Optional[tuple]:
    """(rank, message, failed_at) of another node whose result says it failed (the one whose trainers failed
    first, when they say when); None when none did (yet)."""
    found = []
    for k in range(cenv.num_nodes):
        if k == cenv.node_rank:
            continue
        try:
            data = json.loads((attempt_dir / f"node{k}" / NODE_RESULT).read_text())
        except (OSError, ValueError):
            continue
        if data.get("reason") == "failed":
            at = data.get("failed_at")
            found.append((k, data.get("message", ""), float(at) if isinstance(at, (int, float)) else None))
    if not found:
        return None
    return min(found, key=lambda f: (f[2] is None, f[2] or 0.0, f[0]))


def wait_for_decision(attempt_dir: Path, peer_wait_s: float, log: Callable[[str], None]) -> Optional[Dict[str, Any]]:
    """Node 0's verdict for the attempt, waited for (bounded); None when it published none."""
    deadline = time.monotonic() + peer_wait_s + 30.0
    while time.monotonic() < deadline:
        try:
            return json.loads((attempt_dir / ATTEMPT_DECISION).read_text())
        except (OSError, ValueError):
            time.sleep(0.5)
    log("node 0 published no decision for this attempt; exiting with this node's own status")
    return None


def collect_peers(run: RunDir, cenv: ClusterEnvironment, spec: JobSpec, peer_wait_s: float,
                  log: Callable[[str], None]) -> Dict[int, att.NodeOutcome]:
    """Wait (bounded) for the other nodes' results; classify a silent node from its control dir."""
    attempt_dir = run.attempt_log_dir(cenv.job_id, cenv.restart_count, 0).parent
    deadline = time.monotonic() + peer_wait_s
    found: Dict[int, att.NodeOutcome] = {}
    while True:
        for k in range(1, cenv.num_nodes):
            if k in found:
                continue
            try:
                data = json.loads((attempt_dir / f"node{k}" / NODE_RESULT).read_text())
                found[k] = att.NodeOutcome.from_dict(data)
            except (OSError, ValueError):
                pass
        if len(found) == cenv.num_nodes - 1 or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    for k in range(1, cenv.num_nodes):
        if k not in found:
            state = att.read_control_dir(attempt_dir / f"node{k}" / "control")
            found[k] = att.classify_node(state, spec.resources.trainers_per_node, None,
                                         note=f"node {k} reported no result within {peer_wait_s:.0f}s")
            log(f"node {k} reported no result; from its trainers' records: {found[k].reason}")
    return found


def slurm_command(cenv: ClusterEnvironment, program: str, *args: str) -> Tuple[bool, str]:
    """Run a Slurm action (scontrol requeue, scancel): (True, "") or (False, why)."""
    from .. import slurm

    # Ignore TERM while it runs: Slurm may TERM the whole job at the same moment (preemption).
    out = slurm.call([program, *args], timeout="action", env=cenv.env, preexec_fn=ignore_all_stop_signals)
    return (True, "") if out.ok else (False, out.error)
