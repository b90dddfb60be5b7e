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

    def record_attempt(self, record: Dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.attempts, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_attempts(self) -> List[Dict[str, Any]]:
        try:
            lines = self.attempts.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a killed writer
        return out


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
