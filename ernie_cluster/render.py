"""Render a validated spec into what would be submitted, without submitting anything.

Two forms of the same request, both from the options of `slurm_options` (the one source of every #SBATCH option):
- plain sbatch scripts from `ernie_cluster/templates/` (for people who run `sbatch` themselves), and
- submitit executor parameters plus the sbatch file submitit writes from them.

Every value that reaches a shell line goes through `shlex.quote` (the `q` filter); every value on an
#SBATCH line goes through `slurm_options.sbatch_quote`, since sbatch's own parser reads those lines.
The spec refuses control characters and line breaks in every string, so no value can start a new line.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import jinja2

from . import container
from .frozen_paths import code_setup_lines
from .slurm_options import (Options, chain_options, convert_options, sbatch_lines, submitit_log, submitit_parameters,
                            submitit_written_options, train_options)
from .spec import JobSpec

# Package data (pyproject.toml), so an installed wheel carries them too.
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


@dataclass
class JobRequest:
    """One Slurm job as submitit will submit it."""

    kind: str  # "train" or "convert"
    run_dir: Path
    options: Options  # slurm_options' options of the job, submitit form
    executor_params: Dict[str, Any]
    sbatch_text: str  # the file submitit writes (render fills in a placeholder for the training job's id)

    def describe(self) -> str:
        """What `render` prints for the job: the parameters submit hands to submitit, then the file submitit writes."""
        return "\n".join([
            "# parameters: " + json.dumps(self.executor_params, sort_keys=True),
            f"# submitit writes this as {submitit_folder(self.run_dir)}/%j_submission.sh (%j: the job id); "
            f"submit keeps a copy as {self.run_dir}/submit/{submitit_copy_name(self.kind)}",
            self.sbatch_text])


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
    # submitit's `python` command (the container's `apptainer exec ... IMAGE` first), and the interpreter that
    # runs ernie_cluster on the submitting machine (submit.sh): `python` itself unless it lives in an image
    executor_python: str = ""
    host_python: str = ""

    def describe(self, *, sbatch_only: bool = False) -> str:
        parts = [f"# run directory: {self.run_dir}"]
        parts += [f"# note: {n}" for n in self.notes]
        if sbatch_only:
            parts += ["", f"# ---- {self.run_dir}/submit/train.sbatch", self.train_sbatch]
            if self.convert_sbatch:
                parts += [f"# ---- {self.run_dir}/submit/convert.sbatch", self.convert_sbatch]
            return "\n".join(parts)
        parts += ["", "# ==== submitit: training job", self.train.describe()]
        if self.convert:
            parts += ["# ==== submitit: conversion job (afterok on the training job)", self.convert.describe()]
        return "\n".join(parts)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def resolve_python(spec: JobSpec) -> str:
    """The compute nodes' interpreter: as given (absolute when a path), else the one running submit; with a
    container, the one inside the image (as given, else python3)."""
    in_image = container.python_in_image(spec)
    if in_image is not None:
        return in_image
    python = spec.environment.python
    if python is None:
        return sys.executable
    if "/" in python:
        return str(Path(python).expanduser().absolute())
    return python


def _chain_args(train_id_variable: str) -> str:
    """chain_options as sbatch command-line words for submit.sh, the training job's id read from a shell variable
    (their values are fixed words and the variable: inside double quotes, only the variable expands)."""
    options = chain_options(f"${train_id_variable}")
    return " ".join(f'--{k}="{v}"' if "$" in str(v) else f"--{k}={shlex.quote(str(v))}" for k, v in options.items())


def host_python(spec: JobSpec) -> str:
    """The interpreter submit.sh runs here (freezing, registering the jobs): in an image, the one running render."""
    return sys.executable if spec.environment.container is not None else resolve_python(spec)


def _container_words(spec: JobSpec) -> str:
    """The container's words of the plain scripts' srun line, quoted, with a trailing space ('' without one)."""
    words = container.task_words(spec)
    return shlex.join(words) + " " if words else ""


def render_sbatch(spec: JobSpec, template: str, *, script_path: Path) -> str:
    run_dir = spec.run_dir()
    in_image = spec.environment.container is not None
    return _environment().get_template(template).render(
        convert=spec.convert.enabled,
        spec=spec,
        run_dir=str(run_dir),
        python=resolve_python(spec),
        host_python=host_python(spec),
        # the pip freeze recorded with the frozen code: not of an interpreter inside an image ('-': none)
        freeze_python="-" if in_image else resolve_python(spec),
        container_words=_container_words(spec),
        container_lines=container.setup_lines(spec),
        container_convert=container.convert_step(spec, spec.name) if in_image else "",
        script_path=str(script_path),
        spec_yaml=_heredoc_safe(spec.to_yaml()),
        train_sbatch_lines=sbatch_lines(train_options(spec, "sbatch")),
        convert_sbatch_lines=sbatch_lines(convert_options(spec, "sbatch")),
        # submit.sh (and the conversion script's comment) chain the conversion on sbatch's command line
        chain_args=_chain_args("train"),
        chain_args_example=" ".join(f"--{k}={v}" for k, v in chain_options("<train job id>").items()),
        # after the spec's own lines, before any python: the run's frozen code first on the path. A plain
        # `sbatch` of these scripts without submit.sh (which freezes) runs the installed code, with a note.
        code_lines=code_setup_lines(run_dir, required=False),
    )


def _heredoc_safe(text: str) -> str:
    # bash ends the heredoc only at a line that is exactly the marker; YAML indents every nested line.
    if any(line == "ERNIE_CLUSTER_SPEC_END" for line in text.split("\n")):
        raise ValueError("the spec contains the line ERNIE_CLUSTER_SPEC_END, which ends the embedded spec")
    return text if text.endswith("\n") else text + "\n"


def _setup_lines(spec: JobSpec) -> List[str]:
    """The submitit jobs' setup lines: the spec's, then the run's frozen code first on the path (submit
    freezes it before it submits; a job that finds none ends with exit 2 rather than run other code)."""
    lines = list(spec.environment.setup)
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(spec.environment.env.items())]
    return lines + code_setup_lines(spec.run_dir()) + container.setup_lines(spec)


def _executor_params(spec: JobSpec, options: Options) -> Dict[str, Any]:
    params = submitit_parameters(options, _setup_lines(spec))
    srun_args = container.srun_options(spec)
    if srun_args:  # pyxis: submitit puts them, each shlex-quoted, into its srun line before the command
        params["srun_args"] = srun_args
    return params


def convert_executor_params(spec: JobSpec, train_job_id: str = "<train job id>") -> Dict[str, Any]:
    return _executor_params(spec, convert_options(spec, "submitit", train_job_id))


def submitit_folder(run_dir: Path) -> Path:
    return run_dir / "slurm" / "%j"


def submitit_copy_name(kind: str) -> str:
    """The name under submit/ of the sbatch file submitit wrote for the job (kept by submit)."""
    return f"submitit.{kind}.sbatch"


def submitit_python(python: str, prefix: Sequence[str] = ()) -> str:
    """The `python` command for SlurmExecutor, which puts it into its script as given (shell words): the
    interpreter, after the container's `apptainer exec ... IMAGE` when there is one (`container.exec_prefix`)."""
    return shlex.join([*prefix, python])


def submitit_sbatch_text(params: Dict[str, Any], folder: Path, python: str, prefix: Sequence[str] = ()) -> str:
    """The sbatch file submitit (1.5.4) writes for these parameters: its #SBATCH options, the setup lines, and the
    command that runs the pickled job on every task (tests/test_slurm_options.py compares it with the real file).
    `prefix`: the words before the interpreter in the executor's `python` command (submitit_python)."""
    options = submitit_written_options(params, folder)
    lines = ["#!/bin/bash", "", "# Parameters"]
    lines += [f"#SBATCH --{k}" if v is True else f"#SBATCH --{k}={shlex.quote(str(v))}" for k, v in options.items()]
    if params.get("setup") is not None:
        lines += ["", "# setup", *params["setup"]]
    srun = shlex.join(["srun", "--unbuffered", "--output", submitit_log(folder), *(params.get("srun_args") or [])])
    # text only: the module submitit's batch script runs on every task (nothing here calls it)
    command = " ".join([srun, submitit_python(python, prefix), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return "\n".join(lines + ["", "# command", "export SUBMITIT_EXECUTOR=slurm", command, ""])


def _job_request(spec: JobSpec, kind: str, options: Options) -> JobRequest:
    params = _executor_params(spec, options)
    text = submitit_sbatch_text(params, submitit_folder(spec.run_dir()), resolve_python(spec),
                                container.exec_prefix(spec))
    return JobRequest(kind, spec.run_dir(), options, params, text)


def render(spec: JobSpec) -> RenderedRun:
    run_dir = spec.run_dir()
    train = _job_request(spec, "train", train_options(spec, "submitit"))
    convert = convert_sbatch = None
    if spec.convert.enabled:
        convert = _job_request(spec, "convert", convert_options(spec, "submitit"))
        convert_sbatch = render_sbatch(spec, "convert.sbatch.j2", script_path=run_dir / "submit" / "convert.sbatch")
    notes = container.notes(spec)
    if spec.cluster.backend == "local":
        notes.append("backend 'local': runs on this machine without Slurm; the Slurm scripts below are what backend 'slurm' would submit")
    return RenderedRun(
        run_dir=run_dir,
        python=resolve_python(spec),
        train_sbatch=render_sbatch(spec, "train.sbatch.j2", script_path=run_dir / "submit" / "train.sbatch"),
        convert_sbatch=convert_sbatch,
        train=train,
        convert=convert,
        submit_sh=render_sbatch(spec, "submit.sh.j2", script_path=run_dir / "submit" / "submit.sh"),
        notes=notes,
        executor_python=submitit_python(resolve_python(spec), container.exec_prefix(spec)),
        host_python=host_python(spec),
    )
