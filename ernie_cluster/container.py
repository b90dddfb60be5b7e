"""`environment.container`: the jobs' Python inside a container image, in both forms of submission.

The node launchers (every srun task of the training job) and the conversion run inside the image; the batch
shell around them stays on the host (its setup lines, the spec heredoc, the signal traps).

- apptainer / singularity: the task's command is `apptainer exec [--nv] --pwd RUN --bind DIR ... IMAGE python ...`:
  in the plain scripts' srun line, and as submitit's `python` command (submitit puts it into its srun line).
- pyxis (enroot): srun itself takes `--container-image`, `--container-mounts`, `--container-workdir` and
  `--container-env`: in the plain scripts' srun line, and as submitit's `srun_args`.

Binds: the run directory (frozen code, checkpoints, logs, submitit's folder), the corpus's directory, the raw
corpus's, the model directory, the vocab file's, the conversion output's parent (the converter writes a
temporary directory beside it), then `environment.container.binds`. Each goes to the same path inside, so every
path of the frozen spec means the same file in the image. The writable ones are created before the image starts
(a bind of a missing directory fails).

Working directory: the run directory in both runtimes. Besides keeping relative writes on shared storage, it
holds no package: `python -m` puts the working directory first on sys.path, and an image's Python older than
3.11 ignores PYTHONSAFEPATH, so a job submitted from a checkout would import the checkout over the frozen code.

Environment: srun passes the batch shell's environment to its tasks, and both runtimes pass it into the image,
but a variable the image sets itself keeps the image's value. So PYTHONPATH (the run's frozen code first),
PYTHONSAFEPATH and `environment.env` are forced: pyxis `--container-env=NAMES`, apptainer `APPTAINERENV_NAME`
(`SINGULARITYENV_NAME` for singularity).

The launchers call Slurm's commands (scontrol requeue, sacct, squeue) from inside the image: it needs Slurm's
client commands and configuration for this cluster, or a requeue fails (render says so in a note).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple

from .spec.architectures import is_builtin
from .spec.paths import abs_path
from .spec.sections import BIND_PATH, BIND_PATH_RULE

if TYPE_CHECKING:
    from .spec import JobSpec

REMOTE_SCHEMES = ("docker://", "docker-daemon://", "oras://", "library://", "shub://", "http://", "https://")
DEFAULT_PYTHON = "python3"  # environment.python inside an image: a path on the host means nothing there
FORCED_ENV = ("PYTHONPATH", "PYTHONSAFEPATH")  # the frozen code first (frozen_paths.code_setup_lines)


def is_local_image(runtime: str, image: str) -> bool:
    """Whether the image names a file or directory (that must exist) rather than something to pull."""
    if runtime == "pyxis":  # pyxis takes a squashfs path, else an enroot URI such as nvcr.io#nvidia/paddle:24.01
        return image.startswith(("/", "./", "../", "~"))
    return not image.startswith(REMOTE_SCHEMES)


def automatic_binds(spec: "JobSpec") -> List[Tuple[str, Path]]:
    """(field, directory) for every directory of the run the image must see, in a fixed order."""
    d = spec.data
    found: List[Tuple[str, Path]] = [("output_dir", spec.run_dir())]
    prefix = abs_path(d.input_prefix)
    found.append(("data.input_prefix", prefix if prefix.is_dir() else prefix.parent))
    if d.raw_corpus is not None:
        found.append(("data.raw_corpus", abs_path(d.raw_corpus).parent))
    name = spec.model.model_name_or_path
    if not is_builtin(name):  # a directory, or the reference's static_vars prefix / .pdparams file in one
        model = abs_path(name)
        found.append(("model.model_name_or_path",
                      model.parent if model.name == "static_vars" or model.suffix == ".pdparams" else model))
    if d.vocab_file is not None:
        found.append(("data.vocab_file", abs_path(d.vocab_file).parent))
    found.append(("convert.output_dir", spec.convert_dir().parent))
    return found


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def bind_directories(spec: "JobSpec") -> List[Path]:
    """automatic_binds without repeats and without directories inside another one bound already."""
    paths = [p for _, p in automatic_binds(spec)]
    kept: List[Path] = []
    for i, p in enumerate(paths):
        if not any(_inside(p, q) and (p != q or j < i) for j, q in enumerate(paths) if j != i):
            kept.append(p)
    return kept


def container_problems(spec: "JobSpec") -> List[Tuple[str, str]]:
    """(field, message with the fix) for a spec whose container cannot run as written."""
    c = spec.environment.container
    if c is None:
        return []
    problems: List[Tuple[str, str]] = []
    if spec.cluster.backend == "local":
        problems.append(("environment.container", "the local backend runs on this machine without Slurm and "
                                                  "without an image; remove environment.container or use "
                                                  "cluster.backend: slurm"))
    python = spec.environment.python
    if python is not None and "/" in python and not python.startswith("/"):
        problems.append(("environment.python", f"{python!r} is the interpreter inside the image: give an absolute "
                                               f"path there, or a command on the image's PATH (default "
                                               f"{DEFAULT_PYTHON})"))
    seen = set()
    for field, path in automatic_binds(spec):
        if path in seen:
            continue  # one report per directory: the conversion's default parent is the run directory
        seen.add(path)
        if str(path) == "/":
            problems.append((field, f"its directory is / and environment.container would bind the whole file "
                                    f"system; move it into a directory"))
        elif not BIND_PATH.fullmatch(str(path)):
            problems.append((field, f"its directory {str(path)!r} is bound into the container image, so it must be "
                                    f"{BIND_PATH_RULE}; move it, or rename the directory"))
    return problems


def binds(spec: "JobSpec") -> List[str]:
    """Every bind, `SRC[:DST[:ro|rw]]` (a bare SRC: the same path inside)."""
    c = spec.environment.container
    if c is None:
        return []
    own = [str(p) for p in bind_directories(spec)]
    return own + [b for b in c.binds if b not in own]


_WRITTEN = ("output_dir", "data.input_prefix", "convert.output_dir")


def writable_directories(spec: "JobSpec") -> List[str]:
    """The directories a job may be the first to write into (the run's, the corpus's, the conversion's): created
    before the image starts, since a bind of a missing directory fails."""
    found: List[str] = []
    for field, path in automatic_binds(spec):
        if field in _WRITTEN and str(path) not in found:
            found.append(str(path))
    return found


def forwarded_env(spec: "JobSpec") -> List[str]:
    """The variables whose host value must win over the image's: the frozen code's and environment.env's."""
    return [*FORCED_ENV, *sorted(k for k in spec.environment.env if k not in FORCED_ENV)]


def python_in_image(spec: "JobSpec") -> Optional[str]:
    """The interpreter inside the image (None: no container)."""
    if spec.environment.container is None:
        return None
    return spec.environment.python or DEFAULT_PYTHON


def srun_options(spec: "JobSpec") -> List[str]:
    """srun's own options for the container (pyxis); [] otherwise."""
    c = spec.environment.container
    if c is None or c.runtime != "pyxis":
        return []
    # the image's working directory is not shared storage: anything written relative lands in the run directory
    # (apptainer: --pwd, the same)
    return [f"--container-image={c.image}", f"--container-mounts={','.join(binds(spec))}",
            f"--container-workdir={spec.run_dir()}", f"--container-env={','.join(forwarded_env(spec))}"]


def exec_prefix(spec: "JobSpec") -> List[str]:
    """The words before the interpreter: `apptainer exec ... IMAGE` (apptainer, singularity); [] otherwise."""
    c = spec.environment.container
    if c is None or c.runtime == "pyxis":
        return []
    nv = c.nv if c.nv is not None else spec.resources.gpus_per_node > 0
    words = [c.runtime, "exec", *(["--nv"] if nv else []), "--pwd", str(spec.run_dir())]
    for bind in binds(spec):
        words += ["--bind", bind]
    return words + [c.image]


def task_words(spec: "JobSpec") -> List[str]:
    """What goes between `srun [its own options]` and the interpreter: pyxis's options, or apptainer's prefix."""
    return srun_options(spec) + exec_prefix(spec)


def setup_lines(spec: "JobSpec") -> List[str]:
    """Batch-shell lines after the environment's own (and the frozen code's PYTHONPATH), before srun."""
    c = spec.environment.container
    if c is None:
        return []
    lines = [f"mkdir -p -- {shlex.join(writable_directories(spec))}  # bound into the image: they must exist"]
    if c.runtime != "pyxis":
        prefix = "SINGULARITYENV_" if c.runtime == "singularity" else "APPTAINERENV_"
        # the host's value wins over the image's; an unset variable stays unset (the image keeps its own)
        lines += [f'[ -z "${{{name}+x}}" ] || export {prefix}{name}="${name}"' for name in forwarded_env(spec)]
    return lines


def convert_step(spec: "JobSpec", name: str) -> str:
    """The plain conversion script's last line with a container: one srun step in the image registers the job
    and converts (pyxis would import the image again for a second step)."""
    python, run_dir = python_in_image(spec) or DEFAULT_PYTHON, str(spec.run_dir())
    register = shlex.join([python, "-m", "ernie_cluster.rundir", "register-job", run_dir, "convert"])
    convert = shlex.join([python, "-m", "ernie_cluster.convert", "--run-dir", run_dir])
    script = f'{register} "$SLURM_JOB_ID" {shlex.quote(name)} && exec {convert}'
    return shlex.join(["exec", "srun", "--ntasks=1", *task_words(spec), "sh", "-c", script])


def notes(spec: "JobSpec") -> List[str]:
    """What render says about a container run."""
    c = spec.environment.container
    if c is None:
        return []
    where = "apptainer exec" if c.runtime != "pyxis" else "pyxis (srun --container-image)"
    return [f"environment.container: the node launchers and the conversion run in {c.image} through {where}, "
            f"with {python_in_image(spec)}; the image needs this project's requirements (paddle, paddlenlp, pydantic, "
            f"PyYAML, submitit for the submitit form) and Slurm's client commands (scontrol, sacct, squeue) set up "
            f"for this cluster, which the launchers call to requeue"]
