"""Dynamic data parallel over gloo with two `paddle.distributed.launch` processes (like two
Slurm nodes), the multi-rank stop protocol, and checkpoints crossing engines.

(c) two launchers (--master 127.0.0.1:PORT --nnodes 2 --rank R --nproc_per_node 1): both ranks
    end with identical parameters, losses are sane; a SIGUSR2 to ONE trainer stops both at the
    same step boundary (all-reduced flag) and the restart reproduces the uninterrupted run;
(d) a static-engine checkpoint resumed by the dynamic engine and the dynamic engine's checkpoint
    resumed by the static engine give the static run's losses. Tolerance: relative 1e-5 (on this
    CPU they are in fact bit-identical: same kernels, same fp32 summation order, same data).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest

from test_train_support import (PY, REPO, base_env, by_step, make_run, read_jsonl, run_trainer, set_spec, tiny_spec,
                                toy_data)  # noqa: F401

STEPS = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LaunchedNodes:
    """`nodes` launcher processes on this machine (one trainer each), as that many Slurm nodes would start them."""

    def __init__(self, run: Path, tag: str, nodes: int = 2, **env: str):
        self.run, self.tag, self.nodes = run, tag, nodes
        self.control = run / f"control-{tag}"
        self.loss_log = run / f"loss-{tag}.jsonl"
        port = _free_port()
        self.procs: List[subprocess.Popen] = []
        self.logs = []
        for rank in range(nodes):
            log_dir = run / f"launch-{tag}" / f"node{rank}"
            log_dir.mkdir(parents=True, exist_ok=True)
            out = open(log_dir / "launcher.out", "w")
            self.logs.append(out)
            cmd = [PY, "-m", "paddle.distributed.launch", "--master", f"127.0.0.1:{port}", "--nnodes", str(nodes),
                   "--rank", str(rank), "--nproc_per_node", "1", "--log_dir", str(log_dir),
                   PY, "-u", "-m", "ernie_cluster.train", "--run-dir", str(run)]
            e = base_env(ERNIE_CLUSTER_CONTROL_DIR=str(self.control), ERNIE_CLUSTER_LOSS_LOG=str(self.loss_log), **env)
            self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=e, stdout=out, stderr=subprocess.STDOUT))

    def wait(self, timeout: float = 240) -> List[int]:
        deadline = time.time() + timeout
        rcs = []
        try:
            for p in self.procs:
                rcs.append(p.wait(timeout=max(1, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for p in self.procs:
                p.kill()
            raise AssertionError(f"launchers timed out:\n{self.output()}")
        finally:
            for f in self.logs:
                f.close()
        return rcs

    def output(self) -> str:
        texts = []
        for rank in range(self.nodes):
            for f in sorted((self.run / f"launch-{self.tag}" / f"node{rank}").glob("*")):
                if f.is_file():
                    texts.append(f"== {f}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(texts)

    def exit_record(self, rank: int) -> Dict:
        return json.loads((self.control / f"exit.{rank}.json").read_text())

    def losses(self, rank: int) -> Dict[int, Dict]:
        path = self.loss_log if rank == 0 else Path(f"{self.loss_log}.rank{rank}")
        return by_step(read_jsonl(path))


@pytest.fixture(scope="module")
def two_node_full(tmp_path_factory, toy_data):
    tmp = tmp_path_factory.mktemp("dp2")
    spec = tiny_spec(tmp, toy_data, engine="dynamic", nodes=2, max_steps=STEPS)
    run = make_run(tmp, spec)
    job = LaunchedNodes(run, "full")
    rcs = job.wait()
    assert rcs == [0, 0], job.output()
    return {"run": run, "job": job, "spec": spec}


def test_two_process_data_parallel_keeps_ranks_identical(two_node_full):
    job, run = two_node_full["job"], two_node_full["run"]
    e0, e1 = job.exit_record(0), job.exit_record(1)
    assert e0["reason"] == e1["reason"] == "completed" and e0["step"] == e1["step"] == STEPS
    assert e0["param_digest"] == e1["param_digest"]
    l0, l1 = job.losses(0), job.losses(1)
    assert sorted(l0) == sorted(l1) == list(range(1, STEPS + 1))
    for losses in (l0, l1):
        assert all(math.isfinite(r["loss"]) and 0.1 < r["loss"] < 12 for r in losses.values())
    assert l0[1]["data"] != l1[1]["data"]  # each rank reads its own share of the global batch
    assert sum(l0[s]["loss"] + l1[s]["loss"] for s in (STEPS - 1, STEPS)) < sum(l0[s]["loss"] + l1[s]["loss"] for s in (1, 2))
    ck = run / "checkpoints" / f"step_{STEPS:09d}"
    assert (ck / "rng_rank00000.pkl").is_file() and (ck / "rng_rank00001.pkl").is_file()
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["engine"] == "dynamic" and state["consumed_samples"] == STEPS * 16


def test_two_process_evaluation_is_averaged_over_ranks(two_node_full):
    job = two_node_full["job"]
    (t0,) = [r for r in read_jsonl(Path(f"{job.loss_log}.eval")) if r["split"] == "test"]
    (t1,) = [r for r in read_jsonl(Path(f"{job.loss_log}.rank1.eval")) if r["split"] == "test"]
    assert (t0["rank"], t1["rank"]) == (0, 1) and t0["micro_batches"] == t1["micro_batches"] > 0
    assert t0["local_loss"] != t1["local_loss"]  # each rank evaluated its own share
    assert t0["loss"] == t1["loss"] == pytest.approx((t0["local_loss"] + t1["local_loss"]) / 2, rel=1e-12)
    log0 = (job.run / "launch-full" / "node0" / "workerlog.0").read_text()
    assert f"test at step {STEPS} | loss {t0['loss']:.6f}" in log0


def test_two_process_stop_on_one_rank_and_exact_resume(two_node_full, tmp_path):
    spec = dict(two_node_full["spec"], output_dir=str(tmp_path / "run"))
    run = make_run(tmp_path, spec)
    job = LaunchedNodes(run, "first")
    pid1 = job.control / "trainer.1.pid"
    deadline = time.time() + 180
    while time.time() < deadline and not (pid1.exists() and len(read_jsonl(job.loss_log)) >= 3):
        assert all(p.poll() is None for p in job.procs), job.output()
        time.sleep(0.02)
    import os

    os.kill(int(pid1.read_text()), signal.SIGUSR2)  # what the node launcher forwards
    assert job.wait() == [0, 0], job.output()
    e0, e1 = job.exit_record(0), job.exit_record(1)
    assert e0["reason"] == e1["reason"] == "stopped"
    assert e0["step"] == e1["step"] and 3 <= e0["step"] < STEPS
    assert e1["signal"] == "SIGUSR2" and e0["signal"] == "peer"
    assert e0["param_digest"] == e1["param_digest"]
    stopped = e0["step"]
    again = LaunchedNodes(run, "second")
    assert again.wait() == [0, 0], again.output()
    full = two_node_full["job"]
    for rank in (0, 1):
        got = {**job.losses(rank), **again.losses(rank)}
        ref = full.losses(rank)
        assert [got[s]["loss"] for s in range(1, STEPS + 1)] == [ref[s]["loss"] for s in range(1, STEPS + 1)], rank
    assert again.exit_record(0)["param_digest"] == full.exit_record(0)["param_digest"]
    assert "resumed from" in again.output() and f"step_{stopped:09d}" in again.output()


def _close(a: float, b: float, rel: float = 1e-5) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


def test_static_and_dynamic_checkpoints_are_interchangeable(tmp_path, toy_data):
    spec = tiny_spec(tmp_path / "s", toy_data, engine="static", max_steps=STEPS)
    static_run = make_run(tmp_path / "s", spec)
    ref_t = run_trainer(static_run, "ref")
    assert ref_t.proc.returncode == 0, ref_t.output[-3000:]
    ref = by_step(ref_t.losses())

    # static checkpoint (step 4) -> dynamic engine until step 8
    mixed = make_run(tmp_path / "m", dict(spec, output_dir=str(tmp_path / "m" / "run")))
    shutil.copytree(static_run / "checkpoints" / "step_000000004", mixed / "checkpoints" / "step_000000004")
    set_spec(mixed, engine="dynamic")
    d = run_trainer(mixed, "dyn", ERNIE_CLUSTER_TEST_STOP_AT_STEP="8")
    assert d.proc.returncode == 0, d.output[-3000:]
    assert "resuming a static-engine checkpoint in the dynamic engine" in d.output
    # dynamic checkpoint (step 8) -> static engine to the end
    set_spec(mixed, engine="static")
    s = run_trainer(mixed, "back")
    assert s.proc.returncode == 0, s.output[-3000:]
    assert "resuming a dynamic-engine checkpoint in the static engine" in s.output
    got = {**by_step(d.losses()), **by_step(s.losses())}
    assert sorted(got) == list(range(5, STEPS + 1))
    for step in range(5, STEPS + 1):
        assert got[step]["data"] == ref[step]["data"]
        assert _close(got[step]["loss"], ref[step]["loss"]), (step, got[step]["loss"], ref[step]["loss"])
