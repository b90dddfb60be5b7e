"""The run directory: one place per run for the frozen spec, job ids, logs, checkpoints and the converted model.

    <output_dir>/
      spec.yaml            the validated spec, paths resolved (what every job reads)
      state.json           backend, job ids, submission time (written by submit)
      submit/              rendered sbatch scripts (what was, or would be, submitted)
      slurm/               submitit's folder and per-attempt Slurm logs (%j_%t)
      logs/attempt-<jobid>-<restart>/node<k>/workerlog.<rank>   paddle launcher logs, per attempt
      attempts.jsonl       one line per training attempt end: reason, step, time
      data_cache/          sample index maps, built once per run
      checkpoints/         model_last (newest complete) + older complete checkpoints
      snapshots/model_<step>/   numbered snapshots every save_steps
      visualdl/            scalars for `visualdl --logdir`
      converted/           the dynamic-graph model directory (convert job)
      train.lock           held by the live training attempt
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List


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

    def read_state(self) -> Dict[str, Any]:
        try:
            return json.loads(self.state.read_text())
        except FileNotFoundError:
            return {}

    def write_state(self, state: Dict[str, Any]) -> None:
        write_atomic(self.state, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def register_job(self, kind: str, job_id: str, *, name: str) -> None:
        """Record a job that was submitted outside `submit` (plain sbatch), so `status` can find it."""
        state = self.read_state()
        key = f"{kind}_job_id"
        if state.get(key) == job_id:
            return
        state.setdefault("backend", "slurm")
        state.setdefault("name", name)
        state.setdefault("submitted_via", "sbatch")
        state[key] = job_id
        self.write_state(state)

    def record_attempt(self, record: Dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.attempts, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_attempts(self) -> List[Dict[str, Any]]:
        """One record per attempt (job id, restart), in order; a later line for an attempt replaces it."""
        try:
            lines = self.attempts.read_text().splitlines()
        except FileNotFoundError:
            return []
        out: Dict[Any, Dict[str, Any]] = {}
        for n, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a killed writer
            key = (str(record["job_id"]), record.get("restart")) if "job_id" in record else n
            out[key] = record
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
    if len(argv) != 5 or argv[0] != "register-job":
        print("usage: python -m ernie_cluster.rundir register-job RUN_DIR KIND JOB_ID NAME", file=sys.stderr)
        return 2
    _, run_dir, kind, job_id, name = argv
    RunDir(Path(run_dir)).register_job(kind, job_id, name=name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
