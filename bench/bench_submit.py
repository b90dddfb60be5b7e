"""Login-node latency: `render` and `submit`, each against a baseline measured side by side in the same run.

(a) render: `python -m ernie_cluster render jobs/ernie_dapt.yaml --skip-path-checks` in a fresh process vs a bare
    `python -c pass` start (interleaved repeats); plus load_spec + render() in-process. Goal (issue #16): render < 0.25 s.
    Run with SLURM_CONF removed from the environment: the seed spec names partition v100, which the local
    cluster lacks, so with a cluster configured the CLI's partition check would (rightly) refuse it.
(b) submit, when a Slurm controller answers: `python -m ernie_cluster submit <tiny spec>` (train job + afterok
    conversion job) vs a plain `sbatch --wrap true`, interleaved; plus submit_slurm() in-process vs the same two
    jobs by plain sbatch. Every job is submitted with --begin=now+1hour so none starts, and every job is
    cancelled (`python -m ernie_cluster cancel RUN`, then scancel by id in a finally block). Goal: within 2x of sbatch.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from ernie_cluster import slurm
from ernie_cluster.rundir import RunDir

from bench.common import (REPO, make_row, measure, module_main, row_from_measure, slurm_answered, slurm_available,
                          slurm_env, summarize, time_process)

PY = sys.executable
DAPT_SPEC = REPO / "jobs" / "ernie_dapt.yaml"
RENDER_GOAL_S = 0.25
SUBMIT_GOAL_RATIO = 2.0
HOLD = "now+1hour"  # --begin: the jobs stay PENDING (BeginTime) until we cancel them


def _env_without_slurm() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("SLURM_CONF", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def bench_render(quick: bool) -> List[Dict[str, Any]]:
    repeats, warmup = (5, 1) if quick else (15, 2)
    env = _env_without_slurm()
    render_cmd = [PY, "-m", "ernie_cluster", "render", str(DAPT_SPEC), "--skip-path-checks"]
    bare_cmd = [PY, "-c", "pass"]
    bare, cli = [], []
    for i in range(warmup + repeats):  # interleaved, so both see the same machine load
        b = time_process(bare_cmd, env=env)
        c = time_process(render_cmd, env=env)
        if i >= warmup:
            bare.append(b)
            cli.append(c)
    mb, mc = summarize(bare), summarize(cli)

    from ernie_cluster.render import render
    from ernie_cluster.spec import load_spec

    def once() -> None:
        render(load_spec(DAPT_SPEC, [], check_paths=False))

    inproc = measure(once, repeats=20 if quick else 100, warmup=2)
    rows = [
        row_from_measure("render_cli_s", mc, "s", baseline="bare `python -c pass` start", baseline_value=mb["median"],
                         higher_is_better=False, goal=f"< {RENDER_GOAL_S} s", goal_met=mc["median"] < RENDER_GOAL_S,
                         note=f"fresh process: `python -m ernie_cluster render jobs/ernie_dapt.yaml --skip-path-checks`, "
                              f"{repeats} repeats interleaved with the baseline; SLURM_CONF unset (no partition check)"),
        row_from_measure("render_inprocess_s", inproc, "s", baseline="the same render in a fresh process (render_cli_s)",
                         baseline_value=mc["median"], higher_is_better=False,
                         note="informational (the goal is on render_cli_s): load_spec + render() with modules already imported: what is left without interpreter "
                              "start and imports"),
    ]
    return rows


# ------------------------------------------------------------------ submit ---

def _helpers_spec():
    """tests/helpers_spec.py: the minimal valid spec with fake data that the tests use."""
    path = REPO / "tests" / "helpers_spec.py"
    spec = importlib.util.spec_from_file_location("_bench_helpers_spec", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _tiny_slurm_spec(tmp: Path, partition: str) -> Path:
    helpers = _helpers_spec()
    spec = helpers.base_spec(tmp, cluster={"partition": partition, "time": "00:05:00",
                                           "extra_sbatch": {"begin": HOLD}},
                             environment={"python": PY})
    spec["name"] = "bench-submit"
    return helpers.write_spec(tmp / "bench_submit.yaml", spec)


def _sbatch(env: Dict[str, str], partition: str, *extra: str) -> str:
    out = slurm.sbatch(["-p", partition, f"--begin={HOLD}", "-J", "bench-sbatch", "-o", "/dev/null", *extra,
                        "--wrap", "true"], env=env)
    if not out.ok:
        raise RuntimeError(f"sbatch failed: {out.stderr.strip() if out.answered else out.error}")
    return slurm.parsable_job_id(out)


def _pick_partition(env: Dict[str, str]) -> str:
    names = slurm.sinfo_partitions(env=env, timeout="query")
    parts = [] if isinstance(names, slurm.NoAnswer) else [p.rstrip("*") for p in names]
    return "debug" if "debug" in parts or not parts else parts[0]


def bench_submit(quick: bool) -> List[Dict[str, Any]]:
    env = slurm_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    problem = slurm_available(env)
    if problem:
        return [make_row("submit_cli_s", None, "s", baseline="plain `sbatch --wrap true`",
                         goal=f"<= {SUBMIT_GOAL_RATIO:g}x plain sbatch", goal_met=None, status="skipped",
                         note=f"skipped: no Slurm here ({problem})")]
    repeats, warmup = (3, 1) if quick else (10, 1)
    partition = _pick_partition(env)
    job_ids: List[str] = []
    run_dirs: List[Path] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    saved_conf = os.environ.get("SLURM_CONF")
    if env.get("SLURM_CONF"):
        os.environ["SLURM_CONF"] = env["SLURM_CONF"]  # submit_slurm() below runs sbatch with os.environ
    try:
        spec_path = _tiny_slurm_spec(tmp, partition)
        samples: Dict[str, List[float]] = {"sb1": [], "cli": [], "sb2": [], "inproc": []}
        for i in range(warmup + repeats):
            times = _submit_round(i, spec_path, tmp, partition, env, job_ids, run_dirs)
            if i >= warmup:
                for key, t in times.items():
                    samples[key].append(t)
            _cancel_runs(run_dirs[-2:], env)  # untimed; keeps the queue short between repeats
            slurm_answered(slurm.scancel(job_ids, env=env))
        return _submit_rows({k: summarize(v) for k, v in samples.items()}, partition, repeats, env)
    finally:
        _scancel_all(run_dirs, job_ids, env)
        if saved_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved_conf
        shutil.rmtree(tmp, ignore_errors=True)


def _submit_round(i: int, spec_path: Path, tmp: Path, partition: str, env: Dict[str, str], job_ids: List[str],
                  run_dirs: List[Path]) -> Dict[str, float]:
    """One interleaved repeat: seconds of each way to submit; every job id and run directory is recorded."""
    from ernie_cluster.spec import load_spec
    from ernie_cluster.submit import submit_slurm

    # baseline 1: one plain sbatch
    t0 = time.perf_counter()
    job_ids.append(_sbatch(env, partition))
    t_sb1 = time.perf_counter() - t0

    # the figure: a fresh `python -m ernie_cluster submit` (train + conversion job)
    run_dir = tmp / f"run-cli-{i}"
    run_dirs.append(run_dir)
    t0 = time.perf_counter()
    out = subprocess.run([PY, "-m", "ernie_cluster", "submit", str(spec_path), f"output_dir={run_dir}"],
                         capture_output=True, text=True, env=env, cwd=str(REPO), timeout=120)
    t_cli = time.perf_counter() - t0
    job_ids += re.findall(r"(?:training|conversion) job: (\d+)", out.stdout)
    if out.returncode != 0:
        raise RuntimeError(f"ernie_cluster submit exited {out.returncode}: {out.stderr.strip()[-800:]}")

    # baseline 2: the same two jobs by plain sbatch (train, then convert afterok)
    t0 = time.perf_counter()
    first = _sbatch(env, partition)
    job_ids.append(first)
    job_ids.append(_sbatch(env, partition, f"--dependency=afterok:{first}", "--kill-on-invalid-dep=yes"))
    t_sb2 = time.perf_counter() - t0

    # in-process: submit_slurm() with everything imported and the spec loaded
    run_dir = tmp / f"run-lib-{i}"
    run_dirs.append(run_dir)
    spec = load_spec(spec_path, [f"output_dir={run_dir}"])
    t0 = time.perf_counter()
    sub = submit_slurm(spec)
    t_lib = time.perf_counter() - t0
    job_ids += [j for j in (sub.train_job_id, sub.convert_job_id) if j]
    return {"sb1": t_sb1, "cli": t_cli, "sb2": t_sb2, "inproc": t_lib}


def _submit_rows(m: Dict[str, Dict[str, Any]], partition: str, repeats: int, env: Dict[str, str]) -> List[Dict[str, Any]]:
    ratio = m["cli"]["median"] / m["sb1"]["median"]
    bare = summarize([time_process([PY, "-c", "pass"], env=env) for _ in range(3)])["median"]
    return [
        row_from_measure(
            "submit_cli_s", m["cli"], "s", baseline="plain `sbatch --wrap true` (1 job)",
            baseline_value=m["sb1"]["median"], higher_is_better=False,
            goal=f"<= {SUBMIT_GOAL_RATIO:g}x plain sbatch", goal_met=ratio <= SUBMIT_GOAL_RATIO,
            note=f"fresh `python -m ernie_cluster submit` of a tiny spec on partition {partition}: 2 jobs (train + "
                 f"afterok conversion), run directory, state.json; includes interpreter start + imports "
                 f"(bare python start here: {bare:.3f} s). {repeats} repeats interleaved; all jobs held with "
                 f"--begin and cancelled"),
        row_from_measure(
            "submit_inprocess_s", m["inproc"], "s", baseline="the same 2 jobs by plain sbatch (train + afterok convert)",
            baseline_value=m["sb2"]["median"], higher_is_better=False, goal=f"<= {SUBMIT_GOAL_RATIO:g}x plain sbatch",
            goal_met=m["inproc"]["median"] / m["sb2"]["median"] <= SUBMIT_GOAL_RATIO,
            note="submit_slurm() with modules imported and spec loaded: submitit + run-directory overhead per run"),
    ]


def _cancel_runs(run_dirs: List[Path], env: Dict[str, str]) -> None:
    """`python -m ernie_cluster cancel RUN`, what a user does."""
    for run_dir in run_dirs:
        if RunDir(run_dir).state.exists():
            subprocess.run([PY, "-m", "ernie_cluster", "cancel", str(run_dir)], capture_output=True, env=env,
                           cwd=str(REPO), timeout=60)


def _scancel_all(run_dirs: List[Path], job_ids: List[str], env: Dict[str, str]) -> None:
    """scancel every job we submitted (ids seen, plus those recorded in the run directories); warn if any stays."""
    ids = list(job_ids)
    for run_dir in run_dirs:
        try:
            ids += RunDir(run_dir).job_ids().values()
        except (OSError, ValueError):
            continue
    ids = sorted(set(ids), key=int)
    if not ids:
        return
    for _ in range(3):
        slurm_answered(slurm.scancel(ids, env=env))
        left = _still_queued(ids, env)
        if not left:
            return
        time.sleep(1)
    print(f"bench_submit: WARNING: jobs still queued after scancel: {' '.join(left)}", file=sys.stderr)


def _still_queued(job_ids: List[str], env: Dict[str, str]) -> List[str]:
    out = slurm_answered(slurm.squeue("%i %T", job_ids, env=env))
    return [line.split()[0] for line in out.stdout.splitlines()
            if line.split() and line.split()[-1] not in ("CANCELLED", "COMPLETED", "FAILED")]


def run(quick: bool) -> List[Dict[str, Any]]:
    return bench_render(quick) + bench_submit(quick)


if __name__ == "__main__":
    raise SystemExit(module_main(run, name="bench_submit"))
