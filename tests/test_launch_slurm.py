"""The node launcher on the local Slurm cluster (scripts/local-slurm): the rendered sbatch script,
`srun` once per node, the real `paddle.distributed.launch` with a 2-node rendezvous, a stop signal,
`scontrol requeue`, and the requeued attempt. The trainers are a tiny stand-in module (no model),
selected with $ERNIE_CLUSTER_TRAIN_MODULE, so the test takes about a minute."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ernie_cluster.render import render_sbatch
from ernie_cluster.rundir import RunDir
from ernie_cluster.spec import JobSpec

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent

FAKE_TRAINER_MODULE = textwrap.dedent('''
    """Stand-in trainer: pid file at start, exit record at the end; stops on a signal in the first
    attempt, completes in the next one."""
    import os, signal, time
    from ernie_cluster.train import control
    rank = int(os.environ.get("PADDLE_GLOBAL_RANK", "0"))
    stop = control.StopFlag().install()
    control.write_pid(rank)
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))  # Slurm sets it from the first requeue on
    print("fake trainer rank", rank, "world", os.environ.get("PADDLE_GLOBAL_SIZE"), "restart", restart, flush=True)
    step = 0
    while True:
        if stop:
            control.write_exit(rank, "stopped", step, signal=stop.signal_name)
            break
        if restart >= 1 and step >= 20:
            control.write_exit(rank, "completed", step)
            break
        time.sleep(0.05)
        step += 1
    for name in ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)  # late copies of the signal: harmless now
''')


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_nodes_stop_requeue_and_complete(slurm_cluster, tmp_path: Path) -> None:
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "fake_ernie_trainer.py").write_text(FAKE_TRAINER_MODULE)
    raw = tmp_path / "raw"
    subprocess.run([sys.executable, "-m", "data_tools.toy_corpus", "--out-dir", str(raw), "--docs", "300"],
                   check=True, capture_output=True, cwd=REPO)
    spec = JobSpec.model_validate({
        "name": "launch slurm test", "output_dir": str(tmp_path / "run"),
        "cluster": {"backend": "slurm", "time": "00:10:00", "requeue": {"signal_lead_s": 30}},
        "resources": {"nodes": 2, "procs_per_node": 1},
        "environment": {"python": sys.executable,
                        "env": {"ERNIE_CLUSTER_TRAIN_MODULE": "fake_ernie_trainer", "PYTHONPATH": str(mod_dir)}},
        # node 0 tokenizes the raw corpus and builds the index maps before any trainer starts
        "data": {"input_prefix": str(tmp_path / "data" / "corpus"), "raw_corpus": str(raw / "corpus.txt"),
                 "vocab_file": str(raw / "vocab.txt"), "split": "95,5,0"},
        "model": {"model_name_or_path": "ernie-1.0-base-zh", "random_init": True},
        "train": {"device": "cpu", "max_steps": 10},
    })
    run = RunDir(tmp_path / "run")
    for d in (run.slurm, run.submit):
        d.mkdir(parents=True)
    run.spec.write_text(spec.to_yaml())
    script = run.submit / "train.sbatch"
    script.write_text(render_sbatch(spec, "train.sbatch.j2", script_path=script))

    job = slurm_cluster.sbatch("--chdir", str(REPO), str(script))
    try:
        out_file = run.slurm / f"train-{job}.out"
        control0 = run.attempt_log_dir(job, 0, 0) / "control"
        control1 = run.attempt_log_dir(job, 0, 1) / "control"
        _wait(lambda: (control0 / "trainer.0.pid").exists() and (control1 / "trainer.1.pid").exists(), 120,
              "both nodes' trainers")
        slurm_cluster.run("scancel", "--batch", "--signal=USR2", job)  # what --signal=B:USR2@30 does
        _wait(lambda: run.attempt_log_dir(job, 1, 0).exists(), 180, "the requeued attempt")
        _wait(lambda: len(run.read_attempts()) >= 2, 180, "the second attempt to finish")
        attempts = run.read_attempts()
        first, second = attempts[0], attempts[1]
        assert (first["reason"], first["cause"], first["action"], first["restart"]) == ("stopped", "preempted", "requeue", 0)
        assert (second["reason"], second["restart"]) == ("completed", 1)
        exits0 = json.loads((control0 / "exit.0.json").read_text())
        assert exits0["reason"] == "stopped"
        text = out_file.read_text()
        assert "--nnodes 2" in text and "--rank 1" in text and "--master" in text
        assert (tmp_path / "data" / "corpus_ids.npy").exists() and list(run.data_cache.glob("READY.*"))
        assert "fake trainer rank 1 world 2 restart 0" in (run.attempt_log_dir(job, 0, 1) / "workerlog.0").read_text()
        # the trainers inherit Slurm's SLURM_RESTART_COUNT through srun and paddle's launcher
        assert "fake trainer rank 0 world 2 restart 1" in (run.attempt_log_dir(job, 1, 0) / "workerlog.0").read_text()
        _wait(lambda: "COMPLETED" in slurm_cluster.sacct_states(job, duplicates=True), 60, "sacct COMPLETED")
    finally:
        slurm_cluster.run("scancel", job, check=False)  # never leave the job behind
