"""The run directory: one place per run for the frozen spec, job ids, logs, checkpoints and the converted
model, and the one definition of the records its two bookkeeping files hold (`RunState`, `AttemptRecord`).

    <output_dir>/
      spec.yaml            the validated spec, paths resolved (what every job reads)
      state.json           `RunState`: backend, job ids, submission time; local progress; a cancel request
      submit/              rendered sbatch scripts (what was, or would be, submitted)
      slurm/               Slurm's output: <jobid>/ (submitit's job files and <jobid>_<task>_log.out/.err),
                           or train-<jobid>.out / convert-<jobid>.out of a plain `sbatch` submission
      logs/attempt-<jobid>-<restart>/node<k>/   per attempt and node: launcher.log, workerlog.<rank>
                           (paddle launcher logs), control/ (trainer pid, ready and exit files), node_result.json
      attempts.jsonl       `AttemptRecord`s: one line per training attempt end (node 0 writes it)
      data_cache/          sample index maps, built once per run; data_report.json
      checkpoints/         model_last (newest complete) + older complete checkpoints
      snapshots/model_<step>/   numbered snapshots every save_steps
      visualdl/            scalars for `visualdl --logdir`
      converted/           the dynamic-graph model directory and convert_report.json (convert job), unless
                           the spec sets convert.output_dir
      train.lock           held by the live training attempt
      .submit.lock         held while a `submit` prepares the directory
      previous-<time>/     an earlier run, moved aside by `submit --force`

Both files are read by key, and a reader keeps the keys it does not know: an older or newer
ernie_cluster may have written them. Standard library only (the node launcher imports it).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, TypedDict

JOB_KINDS = ("train", "convert")  # a Slurm run's jobs; state.json keeps each id under "<kind>_job_id"
DATA_REPORT = "data_report.json"        # in data_cache/: documents that give no sample (the data preparation)
CONVERT_REPORT = "convert_report.json"  # in the converted model directory: what the conversion verified


class CancelRequest(TypedDict):
    """`state.json`'s "cancel_requested", written by `python -m ernie_cluster cancel`."""

    job_id: str  # the training job whose attempt ends as `cancelled` (Slurm id, or local<supervisor pid>)
    at: float    # time.time() of the request


class RunState(TypedDict, total=False):
    """`state.json`: the run as the login node knows it. Every key is optional on read.

    Written by `submit` (a fresh state per submission), `register_job` (plain sbatch / submit.sh, and the
    node launcher on Slurm), the local supervisor, and `cancel`."""

    backend: str                  # "slurm" | "local"
    name: str                     # the spec's name
    submitted_at: float           # time.time() of the submission (submit)
    spec_sha256: str              # JobSpec.sha256() of the submitted spec (submit)
    resume: bool                  # submitted with --resume (submit)
    # Slurm
    train_job_id: Optional[str]   # the training job
    convert_job_id: Optional[str]  # the conversion job (afterok); None when convert.enabled is false
    submitted_via: str            # "sbatch": the jobs were registered by register_job, not submitted by `submit`
    # local backend (the supervisor is the `submit` process itself)
    supervisor_pid: Optional[int]
    local_state: str              # RUNNING | CONVERTING | COMPLETED | FAILED | CANCELLED
    restarts: int                 # the restart count of the current (or last) training attempt
    convert_exit_code: int        # exit status of `python -m ernie_cluster.convert`
    # both
    cancel_requested: CancelRequest


class AttemptRecord(TypedDict, total=False):
    """One line of `attempts.jsonl`: how one training attempt ended, written by node 0's launcher
    (`ernie_cluster.launch.node`) before any requeue. Reasons, causes and actions: `launch.attempt`."""

    job_id: str                   # Slurm job id, or local<supervisor pid>
    restart: int                  # SLURM_RESTART_COUNT (or the local supervisor's restart number)
    node: str                     # node 0's host name
    nodes: int                    # nodes in the attempt
    reason: str                   # completed | stopped | failed | lost (no record; written later from Slurm)
    cause: Optional[str]          # what ended it (preempted, timeout, signal, cancelled, crashed, ...)
    ranks: List[int]              # the trainers at fault (trainer-died, crashed...)
    step: Optional[int]           # the last step the trainers reported
    signal: Optional[str]         # the stop signal, e.g. "SIGUSR1"
    started: float                # time.time() when node 0's launcher started
    ended: float                  # time.time() when the attempt was recorded
    exit_code: Optional[int]      # paddle.distributed.launch's exit status on node 0
    action: str                   # none | requeue | requeue-denied | requeue-failed
    message: str                  # what happened, for people
    remaining_s: Optional[float]  # Slurm: time left in the allocation when the stop signal came
    backend: str                  # "slurm" | "local"
    failed_nodes: List["NodeFailure"]  # nodes that died during the attempt (cause node-failed)
    excluded: Dict[str, str]      # node -> why: left out of the requeued job (its ExcNodeList)
    not_excluded: Dict[str, str]  # node -> why a node at fault was not left out (the cap, Slurm's refusal)
    reconciled: Optional[str]     # None; or how a later attempt wrote or corrected this record from Slurm


class NodeFailure(TypedDict, total=False):
    """A node that died during an attempt (an `AttemptRecord`'s failed_nodes), as Slurm reported it."""

    node: str                     # the Slurm node name
    at: Optional[float]           # time.time() when Slurm noticed (its reason's time, else the attempt's end)
    why: str                      # Slurm's reason ("Not responding") or state ("down*")


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def submit(self) -> Path:
        return self.root / "submit"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def attempts(self) -> Path:
        return self.root / "attempts.jsonl"

    @property
    def data_cache(self) -> Path:
        return self.root / "data_cache"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def visualdl(self) -> Path:
        return self.root / "visualdl"

    @property
    def converted(self) -> Path:
        return self.root / "converted"

    @property
    def train_lock(self) -> Path:
        return self.root / "train.lock"

    def attempt_log_dir(self, job_id: str, restart: int, node_rank: int) -> Path:
        return self.logs / f"attempt-{job_id}-{restart}" / f"node{node_rank}"

    # ---------------------------------------------------------------- state.json ---

    def read_state(self) -> RunState:
        """The run's state; empty when there is none yet."""
        try:
            return json.loads(self.state.read_text())
        except FileNotFoundError:
            return {}

    def write_state(self, state: RunState) -> None:
        write_atomic(self.state, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def update_state(self, **values: Any) -> RunState:
        """Set these keys of state.json (names of `RunState`), keeping the others."""
        unknown = sorted(set(values) - set(RunState.__annotations__))
        if unknown:
            raise KeyError(f"not keys of state.json: {', '.join(unknown)}")
        state = self.read_state()
        state.update(values)  # type: ignore[typeddict-item]
        self.write_state(state)
        return state

    def job_ids(self, state: Optional[RunState] = None) -> Dict[str, str]:
        """{kind: Slurm job id} of the jobs recorded in `state` (read here when not given), train first."""
        state = self.read_state() if state is None else state
        raw: Dict[str, Any] = dict(state)
        return {kind: str(raw[f"{kind}_job_id"]) for kind in JOB_KINDS if raw.get(f"{kind}_job_id")}

    def register_job(self, kind: str, job_id: str, *, name: str) -> None:
        """Record a job that was submitted outside `submit` (plain sbatch), so `status` can find it."""
        if kind not in JOB_KINDS:
            raise ValueError(f"job kind {kind!r}: one of {', '.join(JOB_KINDS)}")
        state: Dict[str, Any] = dict(self.read_state())
        key = f"{kind}_job_id"
        if state.get(key) == job_id:
            return
        state.setdefault("backend", "slurm")
        state.setdefault("name", name)
        state.setdefault("submitted_via", "sbatch")
        state[key] = job_id
        self.write_state(state)  # type: ignore[arg-type]

    def request_cancel(self, job_id: str) -> None:
        """Mark the attempts of training job `job_id` as cancelled: its launchers then neither requeue
        nor record a plain stop."""
        self.update_state(cancel_requested=CancelRequest(job_id=str(job_id), at=time.time()))

    def cancel_requested(self, job_id: str) -> bool:
        """Whether `cancel` asked to stop training job `job_id`."""
        request = self.read_state().get("cancel_requested")
        return request is not None and str(request.get("job_id")) == str(job_id)

    # ------------------------------------------------------------ attempts.jsonl ---

    def record_attempt(self, record: AttemptRecord) -> None:
        """Append one attempt's end (a later line for the same job id and restart replaces it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.attempts, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_attempts(self) -> List[AttemptRecord]:
        """One record per attempt (job id, restart), in order; a later line for an attempt replaces it."""
        try:
            lines = self.attempts.read_text().splitlines()
        except FileNotFoundError:
            return []
        out: Dict[Any, AttemptRecord] = {}
        for n, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a killed writer
            if not isinstance(record, dict):
                continue
            key = (str(record["job_id"]), record.get("restart")) if "job_id" in record else n
            out[key] = record  # type: ignore[assignment]
        return list(out.values())


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file in the same directory, fsync, rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def main(argv: List[str]) -> int:
    """`python -m ernie_cluster.rundir register-job RUN KIND JOB_ID NAME` (used by the sbatch templates)."""
    if len(argv) != 5 or argv[0] != "register-job" or argv[2] not in JOB_KINDS:
        print("usage: python -m ernie_cluster.rundir register-job RUN_DIR {train,convert} JOB_ID NAME", file=sys.stderr)
        return 2
    _, run_dir, kind, job_id, name = argv
    RunDir(Path(run_dir)).register_job(kind, job_id, name=name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
