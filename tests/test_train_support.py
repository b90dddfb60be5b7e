"""Shared helpers for the trainer/conversion tests (no tests here).

A toy corpus built with data_tools (cached per pytest session under the base temp dir),
tiny-ERNIE spec files validated through `ernie_cluster.spec.validate_text`, and a way to
start real trainer processes (`python -m ernie_cluster.train`) and read their loss logs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def _run(cmd: List[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=base_env(), **kw)


def base_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("GLOG_minloglevel", "2")
    env.setdefault("OMP_NUM_THREADS", "1")
    for k in ("PADDLE_TRAINER_ID", "PADDLE_TRAINERS_NUM", "PADDLE_GLOBAL_RANK", "PADDLE_GLOBAL_SIZE",
              "ERNIE_CLUSTER_CONTROL_DIR", "ERNIE_CLUSTER_LOSS_LOG", "ERNIE_CLUSTER_TEST_SLOW_SAVE",
              "ERNIE_CLUSTER_TEST_STOP_AT_STEP", "ERNIE_CLUSTER_TEST_HOLD_SAVE", "ERNIE_CLUSTER_TEST_FAIL_SAVE",
              "ERNIE_CLUSTER_TEST_MEM_AVAILABLE_MB"):
        env.pop(k, None)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Dict[str, str]:
    """A ~300-document toy corpus and its vocab, tokenized by data_tools (built once per session)."""
    root = tmp_path_factory.getbasetemp() / "toy_corpus"
    prefix = root / "toy"
    done = root / "DONE"
    if not done.exists():
        root.mkdir(parents=True, exist_ok=True)
        r = _run([PY, "-m", "data_tools.toy_corpus", "--out-dir", str(root), "--docs", "300"])
        assert r.returncode == 0, r.stderr
        r = _run([PY, "-m", "data_tools.create_pretraining_data", "--input", str(root / "corpus.txt"),
                  "--vocab-file", str(root / "vocab.txt"), "--output-prefix", str(prefix), "--chinese",
                  "--cn-whole-word-segment"])
        assert r.returncode == 0, r.stderr
        done.write_text("ok")
    return {"input_prefix": str(prefix), "vocab_file": str(root / "vocab.txt")}


def tiny_spec(tmp: Path, data: Dict[str, str], *, engine: str = "static", nodes: int = 1, **train: Any) -> Dict[str, Any]:
    dropout = train.pop("dropout", 0.0)
    spec = {
        "name": "tiny",
        "output_dir": str(tmp / "run"),
        "cluster": {"backend": "local", "time": "01:00:00", "requeue": {"signal_lead_s": 30}},
        "resources": {"nodes": nodes, "gpus_per_node": 0},
        "data": {**data, "split": "90,8,2", "masking": {"max_predictions_per_seq": 10}},
        "model": {"model_name_or_path": "ernie-1.0-base-zh", "random_init": True, "hidden_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128,
                  "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout},
        "train": {"device": "cpu", "engine": engine, "max_seq_len": 64, "micro_batch_size": 4,
                  "global_batch_size": 8 * nodes, "max_steps": 24, "checkpoint_steps": 4, "save_steps": 1000,
                  "keep_checkpoints": 100, "logging_freq": 4, "eval_freq": 12, "eval_iters": 1, "num_workers": 0,
                  "warmup_rate": 0.1, "max_lr": 1e-3, "min_lr": 1e-4, "seed": 7},
    }
    spec["train"].update(train)
    return spec


def make_run(tmp: Path, spec: Dict[str, Any]) -> Path:
    """Validate the spec like the CLI does and freeze it into RUN/spec.yaml; returns RUN."""
    from ernie_cluster.spec import validate_text

    validated = validate_text(yaml.safe_dump(spec, sort_keys=False), str(tmp / "spec.yaml"), [])
    run = Path(validated.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "spec.yaml").write_text(validated.to_yaml())
    return run


def set_spec(run: Path, **train: Any) -> None:
    data = yaml.safe_load((run / "spec.yaml").read_text())
    data["train"].update(train)
    (run / "spec.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


class Trainer:
    """One `python -m ernie_cluster.train` process with its own control dir and loss log."""

    def __init__(self, run: Path, tag: str, **env: str):
        self.run = run
        self.control = run / f"control-{tag}"
        self.loss_log = run / f"loss-{tag}.jsonl"
        self.log_path = run / f"trainer-{tag}.log"
        self._log = open(self.log_path, "w")
        e = base_env(ERNIE_CLUSTER_CONTROL_DIR=str(self.control), ERNIE_CLUSTER_LOSS_LOG=str(self.loss_log), **env)
        self.proc = subprocess.Popen([PY, "-m", "ernie_cluster.train", "--run-dir", str(run)], cwd=REPO, env=e,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 180) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.proc.send_signal(sig)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def losses(self) -> List[Dict[str, Any]]:
        return read_jsonl(self.loss_log)

    def exit_record(self, rank: int = 0) -> Dict[str, Any]:
        return json.loads((self.control / f"exit.{rank}.json").read_text())

    def wait_for(self, predicate, timeout: float = 120, what: str = "condition") -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"trainer exited ({self.proc.returncode}) before {what}:\n{self.output[-3000:]}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output[-3000:]}")


def run_trainer(run: Path, tag: str, timeout: float = 240, **env: str) -> Trainer:
    t = Trainer(run, tag, **env)
    t.wait(timeout)
    return t


def flip_bit(path: Path, offset: int, mask: int = 0x01) -> None:
    """Damage a file as storage does: the bits of `mask` flipped in the byte at `offset` (negative: from the
    end), the size unchanged."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def copy_checkpoints(src_run: Path, dst_run: Path, steps) -> None:
    """Copy the checkpoints of `steps` from one run directory into another."""
    import shutil

    for step in steps:
        name = f"step_{step:09d}"
        shutil.copytree(src_run / "checkpoints" / name, dst_run / "checkpoints" / name)


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def by_step(records: List[Dict[str, Any]]) -> Dict[int, Dict[str, Any]]:
    return {r["step"]: r for r in records}


def stop_and_resume(tmp: Path, spec: Dict[str, Any], stop_at: int):
    """An uninterrupted run and the same spec stopped after `stop_at` then resumed.

    Returns (ref, a, b, ref_by_step, cut_by_step); every run must have exited 0 and `a` at `stop_at`.
    """
    ref = run_trainer(make_run(tmp / "ref", spec | {"output_dir": str(tmp / "ref" / "run")}), "ref")
    assert ref.proc.returncode == 0, ref.output[-3000:]
    run = make_run(tmp / "cut", spec | {"output_dir": str(tmp / "cut" / "run")})
    a = run_trainer(run, "a", ERNIE_CLUSTER_TEST_STOP_AT_STEP=str(stop_at))
    assert a.proc.returncode == 0 and a.exit_record()["step"] == stop_at, a.output[-3000:]
    b = run_trainer(run, "b")
    assert b.proc.returncode == 0, b.output[-3000:]
    return ref, a, b, by_step(ref.losses()), {**by_step(a.losses()), **by_step(b.losses())}
