"""Render a validated spec into what would be submitted, without submitting anything.

Two forms of the same request:
- plain sbatch scripts from `ernie_cluster/templates/` (for people who run `sbatch` themselves), and
- submitit executor parameters plus the sbatch text submitit will generate from them.

Every value that reaches a shell line goes through `shlex.quote` (the `q` filter); every value on an
#SBATCH line goes through `sbatch_quote` (the `sbq` filter), since sbatch's own parser reads those lines.
The spec refuses control characters and line breaks in every string, so no value can start a new line.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import jinja2

from .spec import JobSpec, slurm_time_to_seconds

# Package data (pyproject.toml), so an installed wheel carries them too.
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


@dataclass
class JobRequest:
    """One Slurm job as submitit will submit it."""

    name: str
    executor_params: Dict[str, Any]
    sbatch_text: str


@dataclass
class RenderedRun:
    run_dir: Path
    python: str
    train_sbatch: str
    convert_sbatch: Optional[str]
    train: JobRequest
    convert: Optional[JobRequest]
    submit_sh: str = ""  # plain-sbatch submission of both scripts (written by `render --out`)
    notes: List[str] = field(default_factory=list)

    def describe(self, *, sbatch_only: bool = False) -> str:
        parts = [f"# run directory: {self.run_dir}"]
        parts += [f"# note: {n}" for n in self.notes]
        if sbatch_only:
            parts += ["", f"# ---- {self.run_dir}/submit/train.sbatch", self.train_sbatch]
            if self.convert_sbatch:
                parts += [f"# ---- {self.run_dir}/submit/convert.sbatch", self.convert_sbatch]
            return "\n".join(parts)
        parts += ["", "# ==== submitit: training job", "# parameters: " + json.dumps(self.train.executor_params, sort_keys=True),
                  self.train.sbatch_text]
        if self.convert:
            parts += ["# ==== submitit: conversion job (afterok on the training job)",
                      "# parameters: " + json.dumps(self.convert.executor_params, sort_keys=True), self.convert.sbatch_text]
        return "\n".join(parts)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    env.filters["sbq"] = sbatch_quote
    return env


def sbatch_escape(value: Any) -> str:
    """sbatch's #SBATCH parser reads a backslash as an escape even inside single quotes (Slurm 22.05:
    `'a\\b'` becomes `ab`, a trailing `\\` leaves the quote open and sbatch refuses the script); doubled, it
    reads back as one backslash. submitit shlex-quotes its values itself, so its parameters get this alone."""
    return str(value).replace("\\", "\\\\")


def sbatch_quote(value: Any) -> str:
    """One #SBATCH option value that sbatch reads back exactly (quotes as shlex, backslashes doubled)."""
    return shlex.quote(sbatch_escape(value))


# extra_sbatch options that shape the training allocation (GPUs, tasks, per-unit memory, placement):
# the one-node conversion job keeps its own shape. Every other option (mail-*, reservation, comment,
# wckey, exclude, licenses, ...) applies to both jobs.
_TRAINING_ONLY_PREFIXES = ("gpu", "ntasks", "cpus-per-gpu", "mem-per-", "nodelist", "exclusive", "switches",
                           "distribution", "array", "sockets-per-node", "cores-per-socket", "threads-per-core",
                           "spread-job", "overcommit")
# Set on the conversion job by ernie_cluster itself: the chain depends on it.
_CONVERT_MANAGED = ("kill-on-invalid-dep",)


def convert_extra_sbatch(spec: JobSpec) -> Dict[str, str]:
    return {k: v for k, v in spec.cluster.extra_sbatch.items()
            if not k.startswith(_TRAINING_ONLY_PREFIXES) and k not in _CONVERT_MANAGED}


def resolve_python(spec: JobSpec) -> str:
    """The compute nodes' interpreter: as given (absolute when a path), else the one running submit."""
    python = spec.environment.python
    if python is None:
        return sys.executable
    if "/" in python:
        return str(Path(python).expanduser().absolute())
    return python


def render_sbatch(spec: JobSpec, template: str, *, script_path: Path) -> str:
    run_dir = spec.run_dir()
    return _environment().get_template(template).render(
        convert=spec.convert.enabled,
        spec=spec,
        run_dir=str(run_dir),
        python=resolve_python(spec),
        script_path=str(script_path),
        spec_yaml=_heredoc_safe(spec.to_yaml()),
        convert_partition=spec.cluster.convert_partition or spec.cluster.partition,
        convert_extra_sbatch=convert_extra_sbatch(spec),
    )


def _heredoc_safe(text: str) -> str:
    # bash ends the heredoc only at a line that is exactly the marker; YAML indents every nested line.
    if any(line == "ERNIE_CLUSTER_SPEC_END" for line in text.split("\n")):
        raise ValueError("the spec contains the line ERNIE_CLUSTER_SPEC_END, which ends the embedded spec")
    return text if text.endswith("\n") else text + "\n"


def _time_minutes(value: str) -> int:
    return max(1, -(-slurm_time_to_seconds(value) // 60))


def _setup_lines(spec: JobSpec) -> List[str]:
    lines = list(spec.environment.setup)
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(spec.environment.env.items())]
    return lines


def train_executor_params(spec: JobSpec) -> Dict[str, Any]:
    c, r = spec.cluster, spec.resources
    extra: Dict[str, Any] = {k: sbatch_escape(v) for k, v in c.extra_sbatch.items()}
    # submitit sends the warning to every srun task (no B:), i.e. to each node's launcher.
    extra["requeue" if c.requeue.enabled else "no-requeue"] = True
    extra["signal"] = f"{c.requeue.signal}@{c.requeue.signal_lead_s}"  # replaces submitit's fixed USR2
    params: Dict[str, Any] = {
        "job_name": sbatch_escape(spec.name),
        "nodes": r.nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": r.cpus_per_task,
        "time": _time_minutes(c.time),
        "signal_delay_s": c.requeue.signal_lead_s,
        "setup": _setup_lines(spec),
        "stderr_to_stdout": True,
        "additional_parameters": extra,
    }
    if r.gpus_per_node:
        params["gpus_per_node"] = r.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(c, key):
            params[key] = getattr(c, key)
    if r.mem:
        params["mem"] = r.mem
    if c.exclusive:
        params["exclusive"] = True
    return params


def convert_executor_params(spec: JobSpec, train_job_id: str = "<train job id>") -> Dict[str, Any]:
    c = spec.cluster
    params: Dict[str, Any] = {
        "job_name": sbatch_escape(f"{spec.name}-convert"),
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": min(spec.resources.cpus_per_task, 4),
        "time": _time_minutes(c.convert_time),
        "setup": _setup_lines(spec),
        "stderr_to_stdout": True,
        "additional_parameters": {**{k: sbatch_escape(v) for k, v in convert_extra_sbatch(spec).items()},
                                  "dependency": f"afterok:{train_job_id}", "kill-on-invalid-dep": "yes"},
    }
    partition = c.convert_partition or c.partition
    if partition:
        params["partition"] = partition
    for key in ("account", "qos"):
        if getattr(c, key):
            params[key] = getattr(c, key)
    return params


def submitit_folder(run_dir: Path) -> Path:
    return run_dir / "slurm" / "%j"


def submitit_sbatch_text(params: Dict[str, Any], folder: Path, python: str) -> str:
    """The exact sbatch text submitit generates for these parameters (pinned submitit 1.5.4)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(python), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **params)


def render(spec: JobSpec) -> RenderedRun:
    run_dir = spec.run_dir()
    python = resolve_python(spec)
    folder = submitit_folder(run_dir)
    train_params = train_executor_params(spec)
    train = JobRequest(spec.name, train_params, submitit_sbatch_text(train_params, folder, python))
    convert = convert_sbatch = None
    if spec.convert.enabled:
        convert_params = convert_executor_params(spec)
        convert = JobRequest(f"{spec.name}-convert", convert_params, submitit_sbatch_text(convert_params, folder, python))
        convert_sbatch = render_sbatch(spec, "convert.sbatch.j2", script_path=run_dir / "submit" / "convert.sbatch")
    notes = []
    if spec.cluster.backend == "local":
        notes.append("backend 'local': runs on this machine without Slurm; the Slurm scripts below are what backend 'slurm' would submit")
    return RenderedRun(
        run_dir=run_dir,
        python=python,
        train_sbatch=render_sbatch(spec, "train.sbatch.j2", script_path=run_dir / "submit" / "train.sbatch"),
        convert_sbatch=convert_sbatch,
        train=train,
        convert=convert,
        submit_sh=render_sbatch(spec, "submit.sh.j2", script_path=run_dir / "submit" / "submit.sh"),
        notes=notes,
    )
