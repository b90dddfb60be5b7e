"""Picklable callables that submitit runs on the compute nodes (kept free of paddle imports)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


class ConvertJob:
    """The conversion job: runs `python -m ernie_cluster.convert` so its exit status is the job's."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def __call__(self) -> str:
        """The converted model's directory (the job's result): the spec's convert.output_dir, else <run>/converted."""
        from .rundir import RunDir
        from .spec import load_frozen

        cmd = [sys.executable, "-m", "ernie_cluster.convert", "--run-dir", self.run_dir]
        print("ernie_cluster: running", " ".join(cmd), flush=True)
        code = subprocess.call(cmd)
        if code != 0:
            raise RuntimeError(f"conversion failed with exit status {code}; see the log above")
        return str(load_frozen(RunDir(Path(self.run_dir)).spec).convert_dir())
