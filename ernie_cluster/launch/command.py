"""The exact `paddle.distributed.launch` command line for one node, and its environment: pure functions.

paddle 2.6.2's launcher takes a `training_script` plus its arguments; a script that does not
end in `.py` is executed as given. So the "script" is the Python interpreter itself and its
arguments are `-u -m ernie_cluster.train --run-dir RUN`: the trainers run the package as a
module (relative imports work, no shim), with the interpreter the node launcher runs under.

Checked against paddle 2.6.2:
- `--master ip:port --nnodes N --rank R` is the rendezvous; the master must be an IP address
  (the launcher compares it with the node's own ip to decide who serves the rendezvous store).
  On one node these flags are left out (no rendezvous at all).
- `--devices` takes labels from $CUDA_VISIBLE_DEVICES when that is set (Slurm sets it), else
  0..G-1; on the CPU `--devices` fails, so `--nproc_per_node` is used there.
- `--host IP` (an address with a dot) replaces the node ip paddle would guess from the host name
  (which can be 127.0.1.1 on Debian-style /etc/hosts).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from ..envvars import child_pythonpath, launcher_environment
from ..rundir import RunDir
from ..spec import BatchPlan, BatchPlanError, JobSpec
from ..train.control import CONTROL_DIR_ENV
from .cluster_env import ClusterEnvironment

TRAIN_MODULE = "ernie_cluster.train"


class CommandError(ValueError):
    """The node cannot be given a valid launcher command; the message says why."""


def paddle_job_id(run_name: str, job_id: str) -> str:
    """`--job_id`: the run name and the Slurm job id, reduced to characters safe in file names and URLs."""
    text = re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{run_name}-{job_id}")).strip("-.")
    if len(text) > 80:  # keep the job id, which makes it unique
        tail = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(job_id))[-40:]
        text = f"{text[:79 - len(tail)].rstrip('-.')}-{tail}"
    return text or "ernie"


def select_devices(count: int, visible_devices: Optional[str]) -> List[str]:
    """The `--devices` labels: the first `count` of $CUDA_VISIBLE_DEVICES when set, else 0..count-1."""
    if count < 1:
        raise CommandError("a GPU run needs at least one GPU per node (resources.gpus_per_node)")
    text = (visible_devices or "").strip()
    if text and text.lower() not in ("all",):
        labels = [x.strip() for x in text.split(",") if x.strip()]
        if text.lower() in ("none", "nodevfiles") or not labels:
            raise CommandError(f"CUDA_VISIBLE_DEVICES={visible_devices!r}: this node has no visible GPU")
        if len(labels) < count:
            raise CommandError(
                f"the spec runs {count} trainers per node but CUDA_VISIBLE_DEVICES={visible_devices!r} "
                f"shows only {len(labels)} GPU(s) here; request --gpus-per-node={count} (resources.gpus_per_node)")
        return labels[:count]
    return [str(i) for i in range(count)]


def attempt_plan(spec: JobSpec, cenv: ClusterEnvironment) -> BatchPlan:
    """This attempt's batch plan on the nodes Slurm gave it (any count of an elastic range); CommandError for an
    allocation outside resources.nodes (e.g. `sbatch --nodes=5` over the script's own range)."""
    try:
        return spec.batch_plan(world_size=cenv.num_nodes * spec.resources.trainers_per_node)
    except BatchPlanError as exc:
        raise CommandError(f"the allocation has {cenv.num_nodes} node(s), but resources.nodes is "
                           f"{spec.resources.nodes}; submit the job with the spec's node count ({exc})") from None


def build_launch_command(
    spec: JobSpec,
    run: RunDir,
    cenv: ClusterEnvironment,
    *,
    python: Optional[str] = None,
    visible_devices: Optional[str] = None,
    host: Optional[str] = None,
    train_module: str = TRAIN_MODULE,
) -> List[str]:
    """argv of `python -m paddle.distributed.launch ...` for node `cenv.node_rank` of the allocation."""
    python = python or sys.executable
    per_node = spec.resources.trainers_per_node
    attempt_plan(spec, cenv)  # the allocation must be one the spec can train on
    argv: List[str] = [python, "-m", "paddle.distributed.launch"]
    if cenv.num_nodes > 1:
        argv += ["--master", f"{cenv.main_address}:{cenv.main_port}",
                 "--nnodes", str(cenv.num_nodes), "--rank", str(cenv.node_rank)]
    if host:
        if "." not in host:
            raise CommandError(f"--host needs an IPv4 address, got {host!r}")
        argv += ["--host", host]
    if spec.train.device == "gpu":
        argv += ["--devices", ",".join(select_devices(per_node, visible_devices))]
    else:
        argv += ["--nproc_per_node", str(per_node)]
    argv += [
        "--log_dir", str(run.attempt_log_dir(cenv.job_id, cenv.restart_count, cenv.node_rank)),
        "--job_id", paddle_job_id(spec.name, cenv.job_id),
        # training_script and its arguments (see the module docstring)
        python, "-u", "-m", train_module, "--run-dir", str(Path(run.root)),
    ]
    return argv


def launch_environment(env: Mapping[str, str], control: Path) -> Tuple[Dict[str, str], List[str], List[str]]:
    """(the environment for paddle.distributed.launch, secret names dropped, paddle overrides dropped): this
    node's environment less secrets (paddle writes its environment into the logs) and variables that
    would override its flags, plus the trainers' control directory and the PYTHONPATH they import from.
    The trainers take the run directory from `--run-dir` and their ranks from paddle's PADDLE_* variables;
    the rest of the node's environment (SLURM_JOB_ID, SLURM_RESTART_COUNT...) reaches them unchanged."""
    child_env, secrets, overrides = launcher_environment(env)
    child_env.update({
        CONTROL_DIR_ENV: str(control),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": child_pythonpath(env),  # the checkout first only when running from one
    })
    return child_env, secrets, overrides
