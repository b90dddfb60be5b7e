"""Running rendered job scripts with bash, srun/sbatch/scontrol/python replaced by recorders of their argv
(tests/test_spec_hostile.py: every hostile value, with and without environment.container)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

from ernie_cluster.render import render
from ernie_cluster.spec import JobSpec, load_frozen

RECORDER = """#!/bin/bash
shopt -s nullglob
calls=("$ERNIE_TEST_REC"/*.call)
n=${#calls[@]}
printf '%s\\0' "${0##*/}" "$@" > "$ERNIE_TEST_REC/$n.call"
printf '%s' "${DOMAIN_TAG-<unset>}" > "$ERNIE_TEST_REC/$n.tag"
printf '%s' "${APPTAINERENV_DOMAIN_TAG-<unset>}" > "$ERNIE_TEST_REC/$n.atag"
case "${0##*/}" in sbatch) echo "$((700 + n));cluster" ;; esac
"""


def _calls(rec: Path) -> List[Tuple[List[str], str]]:
    calls = sorted(rec.glob("*.call"), key=lambda p: int(p.stem))
    return [(c.read_text().split("\0")[:-1], c.with_suffix(".tag").read_text()) for c in calls]


def _run(script: Path, cwd: Path, env: Dict[str, str], rec: Path) -> List[Tuple[List[str], str]]:
    for old in rec.iterdir():
        old.unlink()
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, f"bash -n {script.name}: {check.stderr}"
    proc = subprocess.run(["bash", str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{script.name}: {proc.stderr}"
    return _calls(rec)


def recorders(tmp: Path, python: str) -> Tuple[Path, Path, Path, Dict[str, str]]:
    """(record directory, working directory, script directory, environment) with the stand-ins first on PATH."""
    bin_dir, rec, work, out = (tmp / d for d in ("bin", "rec", "work", "out"))
    for d in (bin_dir, rec, work / "canary", out):
        d.mkdir(parents=True)
    for tool in ("srun", "sbatch", "scontrol", python):
        (bin_dir / tool).write_text(RECORDER)
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp / "home"),
           "ERNIE_TEST_REC": str(rec), "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1"}
    env.pop("DOMAIN_TAG", None)
    return rec, work, out, env


def check_scripts_run(spec: JobSpec, out: Path, work: Path, env: Dict[str, str], rec: Path) -> None:
    """Each script, run by bash with recorders for srun, sbatch and python: every value arrives as one argument."""
    from ernie_cluster import container

    name, run_dir, python = spec.name, str(spec.run_dir()), render(spec).python
    (tag,) = spec.environment.env.values()
    words, in_image = container.task_words(spec), spec.environment.container is not None
    # train.sbatch: one srun of the node launchers; the embedded spec freezes to exactly the validated spec
    calls = _run(out / "train.sbatch", work, env, rec)
    assert calls == [(["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=0", *words, python, "-m",
                       "ernie_cluster.launch", "--run-dir", run_dir], tag)]
    _check_forwarded(spec, rec, tag)
    assert load_frozen(Path(run_dir) / "spec.yaml") == spec  # every field, the paths too, arrives unchanged

    register = [python, "-m", "ernie_cluster.rundir", "register-job", run_dir, "convert", "1", name]
    converting = [python, "-m", "ernie_cluster.convert", "--run-dir", run_dir]
    calls = _run(out / "convert.sbatch", work, env, rec)
    if in_image:  # one srun step: `sh -c SCRIPT` in the image; run that script too
        (argv, got_tag), = calls
        assert argv[:2 + len(words)] == ["srun", "--ntasks=1", *words] and argv[-3:-1] == ["sh", "-c"], argv
        assert got_tag == tag
        (out / "inner.sh").write_text(argv[-1])
        calls = _run(out / "inner.sh", work, {**env, "DOMAIN_TAG": tag}, rec)  # srun hands on the batch environment
    assert calls == [(register, tag), (converting, tag)]

    calls = _run(out / "submit.sh", work, env, rec)
    if in_image:  # submit.sh's bookkeeping runs with the interpreter that rendered it (here, for real)
        assert [argv for argv, _ in calls] == [
            ["sbatch", "--parsable", f"{out}/train.sbatch"],
            ["sbatch", "--parsable", "--dependency=afterok:700", "--kill-on-invalid-dep=yes", f"{out}/convert.sbatch"]]
        state = json.loads((Path(run_dir) / "state.json").read_text())
        assert (state["train_job_id"], state["convert_job_id"], state["name"]) == ("700", "701", name)
        manifest = json.loads((Path(run_dir) / "code" / "MANIFEST.json").read_text())
        assert manifest["pip_freeze"]["file"] is None and "container" in manifest["pip_freeze"]["note"]
    else:
        assert [argv for argv, _ in calls] == [
            [python, "-m", "ernie_cluster.frozen_code", "ensure", run_dir, python],  # the run's code frozen first
            ["sbatch", "--parsable", f"{out}/train.sbatch"],
            [python, "-m", "ernie_cluster.rundir", "register-job", run_dir, "train", "701", name],
            ["sbatch", "--parsable", "--dependency=afterok:701", "--kill-on-invalid-dep=yes", f"{out}/convert.sbatch"],
            [python, "-m", "ernie_cluster.rundir", "register-job", run_dir, "convert", "703", name],
        ]
        # the submitit jobs refuse to start without the frozen code submit writes first (here only its manifest)
        (Path(run_dir) / "code").mkdir()
        (Path(run_dir) / "code" / "MANIFEST.json").write_text("{}")
    assert (Path(run_dir) / "slurm").is_dir()

    exec_prefix, srun_args = container.exec_prefix(spec), container.srun_options(spec)
    for fname in ("submitit.train", "submitit.convert"):
        calls = _run(out / fname, work, env, rec)
        assert calls == [(["srun", "--unbuffered", "--output", f"{run_dir}/slurm/%j/%j_%t_log.out", *srun_args,
                           *exec_prefix, python, "-u", "-m", "submitit.core._submit", f"{run_dir}/slurm/%j"], tag)]
        _check_forwarded(spec, rec, tag)


def _check_forwarded(spec: JobSpec, rec: Path, tag: str) -> None:
    """apptainer: the batch shell hands the host's values on as APPTAINERENV_* (an image's own value loses)."""
    c = spec.environment.container
    forwarded = (rec / "0.atag").read_text()
    assert forwarded == (tag if c is not None and c.runtime == "apptainer" else "<unset>")
