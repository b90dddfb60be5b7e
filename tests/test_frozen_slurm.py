"""Frozen code per run, on the real local Slurm (issue #14): the installed code is edited while a run
waits in the queue, and the run still executes the code it was submitted with.

The "installation" is a copy: the project's wheel in a new venv outside the checkout (test_packaging's
helpers), never the checkout itself. Markers are added to modules only the jobs import (the node
launcher, the trainer, the conversion); a marker in any log would mean a job ran the edited code.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from helpers_spec import write_spec
from test_packaging import _new_venv_with_the_wheel, _outside_env, _pyc, wheel  # noqa: F401  (wheel: the fixture)

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
MARKER = "EDITED-MARKER"
EDITED = {"ernie_cluster/launch/node.py": "launcher", "ernie_cluster/train/trainer.py": "trainer",
          "ernie_cluster/convert.py": "conversion"}
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _edit_installation(site: Path) -> None:
    """Each edited module prints the marker when imported (right after its __future__ import)."""
    for rel, who in EDITED.items():
        path = site / rel
        text = path.read_text()
        future = "from __future__ import annotations\n"
        line = f"print({f'{MARKER} {who}'!r}, flush=True)\n"
        path.write_text(text.replace(future, future + line, 1) if future in text else line + text)


def _tiny_spec(tmp_path: Path, py: Path, run: Path) -> Path:
    """jobs/ernie_tiny_slurm.yaml on one node, a few steps, its own copy of the toy corpus."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("corpus.txt", "vocab.txt"):
        shutil.copy2(REPO / "jobs" / "data" / "toy" / name, data / name)
    spec = yaml.safe_load((REPO / "jobs" / "ernie_tiny_slurm.yaml").read_text())
    steps = 6
    spec.update(name="frozen-code", output_dir=str(run))
    spec["environment"]["python"] = str(py)
    # Both jobs wait in the queue until the test releases them (SBATCH_HOLD is ignored by this sbatch 22.05).
    spec["cluster"]["extra_sbatch"] = {"begin": "now+1hour"}
    spec["resources"].update(nodes=1, procs_per_node=1, cpus_per_task=2)
    spec["data"].update(raw_corpus=str(data / "corpus.txt"), vocab_file=str(data / "vocab.txt"),
                        input_prefix=str(data / "toy"))
    spec["train"].update(max_steps=steps, global_batch_size=8, checkpoint_steps=steps, save_steps=steps,
                         logging_freq=steps, eval_freq=steps, eval_iters=1)
    return write_spec(tmp_path / "spec.yaml", spec)


def _states(ids: List[str]) -> Dict[str, str]:
    out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T"], capture_output=True, text=True).stdout
    return dict(line.split("|") for line in out.splitlines() if line)


def _release(*ids: str) -> None:
    """Let jobs held back by `--begin` start now."""
    for job_id in ids:
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, capture_output=True)


def _wait_terminal(slurm_cluster, job_id: str, timeout: float) -> List[str]:
    deadline = time.monotonic() + timeout
    while True:
        states = slurm_cluster.sacct_states(job_id)
        if states and states[-1] in TERMINAL:
            return states
        assert time.monotonic() < deadline, f"job {job_id} did not end in {timeout:.0f}s: {states}"
        time.sleep(2)


def _texts(root: Path) -> Dict[Path, str]:
    return {p: p.read_text(errors="replace") for p in root.rglob("*") if p.is_file() and "code" not in
            p.relative_to(root).parts[:1] and p.suffix not in (".pdparams", ".pdopt", ".npy", ".npz", ".pkl")}


def test_installation_edited_while_queued_the_run_executes_the_submitted_code(slurm_cluster, wheel, tmp_path):  # noqa: F811
    env = _outside_env()
    env["ERNIE_CLUSTER_CACHE_DIR"] = str(tmp_path / "cache")  # the pip freeze cache: never the user's
    py, site = _new_venv_with_the_wheel(tmp_path, wheel, env)
    # as scripts/setup does for .venv: Python's zlib before paddle's (the preflight imports paddlenlp after paddle)
    subprocess.run([str(REPO / "scripts" / "zlib-first"), str(py.parent.parent)], check=True, env=env, timeout=60)
    work = tmp_path / "elsewhere"
    work.mkdir()
    run = tmp_path / "run"
    spec = _tiny_spec(tmp_path, py, run)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(py), "-m", "ernie_cluster", *args], cwd=work, capture_output=True, text=True,
                              env=env, timeout=180)

    ids: List[str] = []
    try:
        out = cli("submit", str(spec))  # both jobs wait in the queue until released
        assert out.returncode == 0, out.stdout + out.stderr
        jobs = dict(re.findall(r"^(training|conversion) job: (\d+)", out.stdout, re.M))
        ids += jobs.values()
        assert set(jobs) == {"training", "conversion"}, out.stdout
        assert _states(ids) == {i: "PENDING" for i in ids}
        frozen_site = run / "code" / "site"
        manifest = json.loads((run / "code" / "MANIFEST.json").read_text())
        assert manifest["sources"] == {"ernie_cluster": str(site / "ernie_cluster"), "data_tools": str(site / "data_tools")}
        assert manifest["git"] is None and (run / "code" / "pip-freeze.txt").is_file()

        _edit_installation(site)  # while the run waits
        probe = subprocess.run([str(py), "-B", "-c", "import ernie_cluster.launch.node"], cwd=work, env=env,
                               capture_output=True, text=True, timeout=120)
        assert f"{MARKER} launcher" in probe.stdout, probe.stdout + probe.stderr  # the installation is edited
        diff = subprocess.run([str(py), "-m", "ernie_cluster.frozen_code", "diff", str(run)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=120)
        assert diff.returncode == 1 and diff.stdout.splitlines() == [f"changed: {rel}" for rel in sorted(EDITED)]

        assert _states(ids) == {i: "PENDING" for i in ids}  # edited while the run waited in the queue
        _release(*ids)
        assert _wait_terminal(slurm_cluster, jobs["conversion"], 420) == ["COMPLETED"], \
            "\n".join(f"{p}:\n{t[-3000:]}" for p, t in _texts(run / "slurm").items())
        assert slurm_cluster.sacct_states(jobs["training"]) == ["COMPLETED"]

        # The submitted code ran: no marker anywhere; the job-only modules were compiled in the frozen copy,
        # never in the edited installation (submit itself imports the launcher, so it is not one of them);
        # the trainers' PYTHONPATH starts with the frozen copy.
        logs = _texts(run)
        assert any("workerlog" in p.name for p in logs) and any(p.suffix == ".out" for p in logs), sorted(logs)
        marked = [str(p) for p, text in logs.items() if MARKER in text]
        assert not marked, f"the edited installation ran: {marked}"
        for module in ("ernie_cluster.train.trainer", "ernie_cluster.convert", "data_tools.create_pretraining_data"):
            assert _pyc(frozen_site, module).is_file() and not _pyc(site, module).exists(), module
        node0 = run / "logs" / f"attempt-{jobs['training']}-0" / "node0"
        trainer_env = dict(line.split("=", 1) for line in (node0 / "envlog.0").read_text().splitlines() if "=" in line)
        assert trainer_env["PYTHONPATH"].split(":")[0] == str(frozen_site) and trainer_env["PYTHONSAFEPATH"] == "1"
        converted = json.loads((run / "converted" / "convert_report.json").read_text())
        assert converted["passed"] is True

        # --resume with the edited installation: refused, listing what differs and naming the flag
        state = (run / "state.json").read_text()
        refused = cli("submit", str(spec), "--resume")
        assert refused.returncode == 2 and "--new-code" in refused.stderr, refused.stdout + refused.stderr
        assert all(f"changed: {rel}" in refused.stderr for rel in EDITED), refused.stderr
        assert (run / "state.json").read_text() == state and json.loads((run / "code" / "MANIFEST.json").read_text()) == manifest
        # ... and with --new-code it proceeds: the edited code is frozen in place of the old copy
        resumed = cli("submit", str(spec), "--resume", "--new-code")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        again = dict(re.findall(r"^(training|conversion) job: (\d+)", resumed.stdout, re.M))
        ids += again.values()
        assert f"{MARKER} trainer" in (frozen_site / "ernie_cluster" / "train" / "trainer.py").read_text()
        assert json.loads((run / "state.json").read_text())["train_job_id"] == again["training"]
        # control: that training job (resuming at its last step) runs the new code, and says so
        subprocess.run(["scancel", again["conversion"]], check=True, capture_output=True)
        _release(again["training"])
        assert _wait_terminal(slurm_cluster, again["training"], 300) == ["COMPLETED"]
        worker = (run / "logs" / f"attempt-{again['training']}-0" / "node0" / "workerlog.0").read_text()
        assert f"{MARKER} trainer" in worker, worker[-3000:]
    finally:
        if ids:
            slurm_cluster.run("scancel", *ids, check=False)
