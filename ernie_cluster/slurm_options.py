"""The Slurm options of each job, in one place.

`train_options` and `convert_options` turn a spec into the sbatch options of the training job and of the
conversion job: an ordered {option: value} dict (the long option name without dashes; True for a bare flag
such as --exclusive; options that are not set are left out). Everything that submits is derived from them:

- the plain sbatch scripts (templates/*.sbatch.j2) print `sbatch_lines(options)` as their #SBATCH lines;
- submit.py hands `submitit_parameters(options, setup)` to submitit's public `SlurmExecutor.update_parameters`,
  and `render` shows the #SBATCH lines submitit writes from them (`submitit_written_options`).

A first-class Slurm flag is a spec field plus one line in `train_options` (and in `convert_options` when the
conversion job takes it too).

The two forms ("sbatch": the Jinja scripts; "submitit") differ only where a job cannot be the same in both;
each difference is marked at its line and listed in FORM_DIFFERENCES. tests/test_slurm_options.py submits
through submitit on the local Slurm and checks that the options in submitit's submission file are exactly these
(plus SUBMITIT_OWN), and the template's the same apart from FORM_DIFFERENCES.

Values: a value on an #SBATCH line is read by sbatch's own parser, so it is written with `sbatch_quote`
(shlex quoting, backslashes doubled); submitit shlex-quotes values itself, so its parameters get `sbatch_escape`.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

from .slurm import slurm_time_to_seconds
from .spec import JobSpec

Form = Literal["sbatch", "submitit"]
Value = Union[str, int, bool]
Options = Dict[str, Value]

# Options a form writes differently (see the lines that set them):
#   output      each form names its own log file (submitit's is the one its job objects read back);
#   signal      the plain script's batch shell traps the warning and forwards it (B:), and asks for none without
#               requeue; submitit's batch shell has no trap (its warning goes to every srun task), and submitit
#               always writes a --signal, also on the conversion job (its default USR2@90);
#   dependency  the plain conversion script cannot name the training job: submit.sh passes it to sbatch.
FORM_DIFFERENCES = ("output", "signal", "dependency")
# What submitit writes into every submission file on its own: its log, and its warning where a job sets none.
SUBMITIT_OWN = ("output", "signal")


def sbatch_escape(value: Any) -> str:
    """sbatch's #SBATCH parser reads a backslash as an escape even inside single quotes (Slurm 22.05:
    `'a\\b'` becomes `ab`, a trailing `\\` leaves the quote open and sbatch refuses the script); doubled, it
    reads back as one backslash. submitit shlex-quotes its values itself, so its parameters get this alone."""
    return str(value).replace("\\", "\\\\")


def sbatch_quote(value: Any) -> str:
    """One #SBATCH option value that sbatch reads back exactly (quotes as shlex, backslashes doubled)."""
    return shlex.quote(sbatch_escape(value))


def sbatch_lines(options: Options) -> List[str]:
    return [f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={sbatch_quote(value)}"
            for key, value in options.items()]


def time_minutes(value: str) -> int:
    """A Slurm time limit in whole minutes, rounded up as Slurm stores it (submitit takes minutes)."""
    return max(1, -(-slurm_time_to_seconds(value) // 60))


def _set(options: Dict[str, Optional[Value]]) -> Options:
    return {k: v for k, v in options.items() if v is not None and v is not False}


def _log(spec: JobSpec, job: str, form: Form) -> Optional[str]:
    # FORM_DIFFERENCES: submitit writes its own --output (<run>/slurm/<job id>/<job id>_0_log.out).
    return None if form == "submitit" else f"{spec.run_dir()}/slurm/{job}-%j.out"


def train_options(spec: JobSpec, form: Form) -> Options:
    """The training job's sbatch options."""
    c, r, q = spec.cluster, spec.resources, spec.cluster.requeue
    warning = f"{q.signal}@{q.signal_lead_s}"
    options = _set({
        "job-name": spec.name,
        "nodes": r.nodes,
        # one node launcher per node; it starts the node's trainers. Not with a node range: sbatch would count
        # min nodes x 1 tasks, and Slurm then starts the job on the fewest nodes even when more are free (seen on
        # Slurm 22.05); without it srun runs one task per allocated node (the plain script's srun says so too)
        "ntasks-per-node": None if r.elastic else 1,
        "cpus-per-task": r.cpus_per_task,
        "gpus-per-node": r.gpus_per_node or None,
        "mem": r.mem,
        "time": time_minutes(c.time),
        "partition": c.partition,
        "account": c.account,
        "qos": c.qos,
        "constraint": c.constraint,
        "exclusive": c.exclusive,
        "output": _log(spec, "train", form),
        "open-mode": "append",  # a requeued attempt appends to the same log
        "requeue": q.enabled,
        "no-requeue": not q.enabled,
        # FORM_DIFFERENCES: the plain batch shell forwards the warning to srun (B:); submitit's cannot.
        "signal": warning if form == "submitit" else f"B:{warning}" if q.enabled else None,
    })
    options.update(sorted(c.extra_sbatch.items()))
    return options


def chain_options(train_job_id: str) -> Options:
    """What chains the conversion after training: it starts once training completed, and is cancelled, not
    left pending forever, when training failed (the chain relies on both)."""
    return {"dependency": f"afterok:{train_job_id}", "kill-on-invalid-dep": "yes"}


# extra_sbatch options that shape the training allocation (GPUs, tasks, per-unit memory, placement):
# the one-node conversion job keeps its own shape. Every other option (mail-*, reservation, comment,
# wckey, exclude, licenses, ...) applies to both jobs.
_TRAINING_ONLY_PREFIXES = ("gpu", "ntasks", "cpus-per-gpu", "mem-per-", "nodelist", "exclusive", "switches",
                           "distribution", "array", "sockets-per-node", "cores-per-socket", "threads-per-core",
                           "spread-job", "overcommit")


def convert_extra_sbatch(spec: JobSpec) -> Dict[str, str]:
    """The extra_sbatch options the conversion job takes: all but the allocation-shaping ones and the chain's."""
    chain = chain_options("")
    return {k: v for k, v in spec.cluster.extra_sbatch.items()
            if not k.startswith(_TRAINING_ONLY_PREFIXES) and k not in chain}


def convert_options(spec: JobSpec, form: Form, train_job_id: str = "<train job id>") -> Options:
    """The conversion job's sbatch options (one node, after the training job `train_job_id`)."""
    c = spec.cluster
    options = _set({
        "job-name": f"{spec.name}-convert",
        "nodes": 1,
        "ntasks-per-node": 1,
        "cpus-per-task": min(spec.resources.cpus_per_task, 4),
        "time": time_minutes(c.convert_time),
        "partition": c.convert_partition or c.partition,
        "account": c.account,
        "qos": c.qos,
        "output": _log(spec, "convert", form),
        "open-mode": "append",
    })
    chain = chain_options(train_job_id)
    if form == "sbatch":
        del chain["dependency"]  # FORM_DIFFERENCES: known only once training is submitted; submit.sh passes it
    options.update(chain)
    options.update(sorted(convert_extra_sbatch(spec).items()))
    return options


# submitit reads these itself (its default job name; nodes x ntasks_per_node: how many tasks it waits for; time:
# minutes, for its own timeout logic), so they go in as its named parameters. Every other option goes in as
# additional_parameters, which submitit writes as given, over its own options of the same name.
_SUBMITIT_NAMED = ("job-name", "nodes", "ntasks-per-node", "time")


def submitit_parameters(options: Options, setup: List[str]) -> Dict[str, Any]:
    """`SlurmExecutor.update_parameters` arguments that make submitit write exactly `options`."""
    params: Dict[str, Any] = {"setup": setup, "stderr_to_stdout": True,
                              "wckey": None}  # no --wckey=submitit: the job is accounted like a plain sbatch one
    extra: Dict[str, Any] = {}
    for key, value in options.items():
        value = sbatch_escape(value) if isinstance(value, str) else value  # submitit shlex-quotes it
        if key == "nodes" and isinstance(value, str):  # a range (elastic): submitit counts tasks from the minimum
            params["nodes"] = int(value.split("-")[0])
            extra[key] = value  # ... and writes the range over its own --nodes
        elif key in _SUBMITIT_NAMED:
            params[key.replace("-", "_")] = value
        else:
            extra[key] = value
    params["additional_parameters"] = extra
    return params


def submitit_log(folder: Path) -> str:
    """The log of task %t that submitit's srun writes (<folder>/%j_%t_log.out)."""
    from submitit.core.utils import JobPaths

    return str(JobPaths(folder).stdout)


# Which parameters are no #SBATCH option, and submitit's defaults for the ones it always writes (submitit 1.5.4).
_NOT_SBATCH = ("setup", "teardown", "signal_delay_s", "stderr_to_stdout", "srun_args", "use_srun",
               "array_parallelism", "additional_parameters")
_SUBMITIT_DEFAULTS = {"job_name": "submitit", "time": 5, "nodes": 1, "wckey": "submitit"}


def submitit_written_options(params: Dict[str, Any], folder: Path) -> Dict[str, Value]:
    """The #SBATCH options, in their order, that submitit writes for `params` (values as submitit quotes them:
    already escaped): its named parameters, its own log, warning and open mode, then additional_parameters over
    them. render shows these; tests/test_slurm_options.py checks them against the file submitit writes."""
    written: Dict[str, Any] = {**_SUBMITIT_DEFAULTS, **{k: v for k, v in params.items() if k not in _NOT_SBATCH}}
    written["signal"] = f"USR2@{params.get('signal_delay_s', 90)}"
    written["output"] = submitit_log(folder).replace("%t", "0")
    if not params.get("stderr_to_stdout"):
        written["error"] = written["output"].replace("_log.out", "_log.err")
    written["open-mode"] = "append"
    written.update(params.get("additional_parameters") or {})
    return {k.replace("_", "-"): written[k] for k in sorted(written) if written[k] is not None}
