"""Submit a rendered run: create the run directory, then hand the jobs to Slurm (through submitit) or run them locally.

The run directory is owned by one live run at a time. A second submit into it is refused while the
first is alive; once it is not, `--resume` continues from its checkpoints and `--force` starts over
after moving the old run aside (nothing is deleted).

Before anything is submitted, the code the run executes is frozen into <run>/code (`frozen_code`):
every attempt and the conversion import that copy, whatever happens to the installation meanwhile.
`--resume` keeps the run's copy when the installation holds the same code, and refuses different
code (exit 2, listing what differs) unless `--new-code` says to freeze the installation again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .frozen_code import CodeChanged, FrozenCodeError, ensure_frozen, freeze_code
from .render import RenderedRun, convert_executor_params, render, submitit_copy_name, submitit_folder
from .procs import pid_alive
from .rundir import RunDir, RunState, write_atomic
from .slurm import job_states as slurm_jobs  # kept under its old name: tests/test_submit_liveness.py imports it from here
from .spec import JobSpec

ALIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
                "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}


class SubmitError(Exception):
    """A refusal with a message for the user; nothing was submitted."""


@dataclass
class Submission:
    run_dir: Path
    backend: str
    train_job_id: Optional[str]
    convert_job_id: Optional[str]
    code: str = ""  # what happened to the frozen code (frozen, kept, frozen again)


def live_jobs(run: RunDir) -> List[str]:
    """Describe the jobs of the run in `run` that are still alive (empty: the directory is free)."""
    state = run.read_state()
    if not state:
        return []
    if state.get("backend") == "local":
        pid = state.get("supervisor_pid")
        return [f"local supervisor pid {pid}"] if pid and pid_alive(int(pid), cmdline_contains="ernie_cluster") else []
    alive = []
    held = _train_lock_holder(run)
    if held is not None:
        alive.append(f"a node launcher holds {run.train_lock} ({held or 'no details'})")
    jobs = run.job_ids(state)
    found = slurm_jobs(list(jobs.values()))
    for kind, jid in jobs.items():
        job_state, reason = found.get(jid, ("", ""))
        if job_state in ALIVE_STATES or job_state == "UNKNOWN":
            alive.append(f"{kind} job {jid} ({job_state}{', ' + reason if reason else ''})")
    return alive


def _train_lock_holder(run: RunDir) -> Optional[str]:
    """The holder's note when a node launcher holds the run's train.lock right now; None when free."""
    if not run.train_lock.exists():
        return None
    try:
        with open(run.train_lock, "r+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip().replace("\n", " ")[:200]
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


@contextmanager
def _submit_lock(run: RunDir) -> Iterator[None]:
    run.root.mkdir(parents=True, exist_ok=True)
    with open(run.root / ".submit.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SubmitError(f"another submit into {run.root} is in progress; wait for it") from None
        yield


def prepare_run_dir(spec: JobSpec, rendered: RenderedRun, *, resume: bool, force: bool,
                    new_code: bool = False) -> Tuple[RunDir, str]:
    """The run directory ready for submission, the code frozen in it; (it, what happened to the code)."""
    run = RunDir(rendered.run_dir)
    alive = live_jobs(run)
    if alive:
        raise SubmitError(
            f"{run.root} belongs to a live run: {', '.join(alive)}. Two runs must not share an output directory: "
            f"wait for it, `python -m ernie_cluster cancel {run.root}`, or choose another output_dir.")
    previous = run.read_state()
    has_checkpoints = run.checkpoints.exists() and any(run.checkpoints.iterdir())
    if (previous or has_checkpoints) and not (resume or force):
        raise SubmitError(
            f"{run.root} already holds a run ({'checkpoints' if has_checkpoints else 'state.json'} present). "
            f"Pass --resume to continue from its checkpoints, --force to start over (the old run is moved aside), "
            f"or choose another output_dir.")
    # the pip freeze recorded beside the frozen code: the compute interpreter's, none when it is inside an image
    python = None if spec.environment.container is not None else rendered.python
    code = _resume_code(run, python, new_code) if resume else ""
    if force and (previous or has_checkpoints):
        archive = run.root / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
        archive.mkdir()
        for name in ("state.json", "attempts.jsonl", "checkpoints", "snapshots", "converted", "visualdl", "logs", "slurm",
                     "submit", "spec.yaml", "code"):
            if (run.root / name).exists():
                shutil.move(str(run.root / name), str(archive / name))
    for sub in (run.submit, run.slurm, run.logs):
        sub.mkdir(parents=True, exist_ok=True)
    write_atomic(run.spec, spec.to_yaml())
    write_atomic(run.submit / "train.sbatch", rendered.train_sbatch)
    if rendered.convert_sbatch:
        write_atomic(run.submit / "convert.sbatch", rendered.convert_sbatch)
    if not resume:
        try:
            frozen = freeze_code(run.root, python=python)
        except FrozenCodeError as exc:
            raise SubmitError(f"cannot freeze the code the run would execute: {exc}") from None
        code = f"frozen: {frozen.files} files ({frozen.tree_sha256[:12]}) in {frozen.root}"
    return run, code


def _resume_code(run: RunDir, python: Optional[str], new_code: bool) -> str:
    """--resume: the run keeps its frozen code when the installation holds the same; different code is
    refused (nothing written yet) unless `new_code`. A run submitted before freezing existed is frozen now."""
    notes: List[str] = []
    try:
        frozen = ensure_frozen(run.root, python=python, new_code=new_code, log=notes.append)
    except CodeChanged as exc:
        raise SubmitError(f"--resume: {exc}") from None
    except FrozenCodeError as exc:
        raise SubmitError(f"cannot freeze the code the run would execute: {exc}") from None
    for note in notes:
        print(note, file=sys.stderr)
    if frozen is None:
        return f"kept: the run's frozen code in {run.root / 'code'} (the installation holds the same code)"
    return f"frozen: {frozen.files} files ({frozen.tree_sha256[:12]}) in {frozen.root}"


def submit_slurm(spec: JobSpec, *, resume: bool = False, force: bool = False, new_code: bool = False) -> Submission:
    from .launch.node import NodeLauncher
    from .jobs import ConvertJob

    rendered = render(spec)
    run = RunDir(rendered.run_dir)
    with _submit_lock(run):
        _, code = prepare_run_dir(spec, rendered, resume=resume, force=force, new_code=new_code)
        launcher = NodeLauncher(str(run.root))
        train_job = _submitit_submit(run, rendered, rendered.train.executor_params, launcher, "train")
        convert_id = None
        state: RunState = {"backend": "slurm", "name": spec.name, "train_job_id": train_job.job_id,
                           "convert_job_id": None, "submitted_at": time.time(), "spec_sha256": spec.sha256(),
                           "resume": resume}
        run.write_state(state)  # the training job exists now: record it before anything else can fail
        if spec.convert.enabled:
            params = convert_executor_params(spec, train_job.job_id)
            convert_id = _submitit_submit(run, rendered, params, ConvertJob(str(run.root)), "convert").job_id
            state["convert_job_id"] = convert_id
            run.write_state(state)
    return Submission(run.root, "slurm", train_job.job_id, convert_id, code)


def _submitit_submit(run: RunDir, rendered: RenderedRun, params: Dict[str, Any], job_callable: Callable[[], Any],
                     kind: str) -> Any:
    """Submit one job through submitit's public API (a submitit Job comes back); keep the sbatch file submitit
    wrote (<run>/slurm/<job id>/<job id>_submission.sh) in submit/, next to the plain scripts."""
    import submitit

    # python: a shell command that submitit puts into its srun line as given (with a container, `apptainer exec
    # ... IMAGE python3`); pyxis' options come as the parameters' srun_args
    executor = submitit.SlurmExecutor(folder=submitit_folder(run.root), python=rendered.executor_python,
                                      max_num_timeout=0)
    executor.update_parameters(**params)
    job = executor.submit(job_callable)
    try:  # the job exists whatever happens here: a missing copy is only a warning
        write_atomic(run.submit / submitit_copy_name(kind), Path(job.paths.submission_file).read_text())
    except OSError as exc:
        print(f"warning: could not copy submitit's sbatch file of job {job.job_id} into {run.submit}: {exc}",
              file=sys.stderr)
    return job


def submit_local(spec: JobSpec, *, resume: bool = False, force: bool = False, new_code: bool = False,
                 preempt_after_s: Optional[float] = None) -> Submission:
    """Run the whole chain on this machine, in the foreground: data, train (with requeues), convert."""
    from .local import LocalSupervisor

    rendered = render(spec)
    run = RunDir(rendered.run_dir)
    with _submit_lock(run):
        _, code = prepare_run_dir(spec, rendered, resume=resume, force=force, new_code=new_code)
        print(f"[ernie_cluster local] code {code}", flush=True)
        state: RunState = {"backend": "local", "name": spec.name, "supervisor_pid": os.getpid(),
                           "submitted_at": time.time(), "spec_sha256": spec.sha256(), "resume": resume}
        run.write_state(state)
    supervisor = LocalSupervisor(spec, run, python=rendered.python, preempt_after_s=preempt_after_s)
    supervisor.run()
    return Submission(run.root, "local", None, None, code)
