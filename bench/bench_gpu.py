"""GPU path: the static engine on one GPU with AMP, ERNIE 1.0 base shape, against the published figure.

Runs the real trainer (`python -m ernie_cluster.train`, static engine, fp16 AMP with dynamic loss
scaling) for a few hundred steps at seq 128 and seq 512 on a synthetic corpus, and reads samples/s
and tokens/s from its log lines (the first logging window, which includes compilation, is dropped).
The comparison is the published ERNIE 1.0 static AMP figure: 666.11 seq/s at seq 128, batch 128, on
one V100-16G (PaddleNLP PR #1744). It is a published number, not re-measured here: no V100 is lent.

Needs an NVIDIA GPU and a GPU build of paddle (`scripts/gpu-path` installs paddlepaddle-gpu==2.6.2
into .venv-gpu and runs this); raises Skip elsewhere.

    python -m bench.bench_gpu [--quick] [--json OUT]
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, Skip, make_row, module_main  # noqa: E402

PUBLISHED_SEQ128 = 666.11  # seq/s, ERNIE 1.0 static AMP, seq 128, batch 128, V100-16G (PaddleNLP PR #1744)
LOG_LINE = re.compile(r"step (\d+)/\d+ .*?([\d.]+) samples/s \| (\d+) tokens/s")


def _gpu_name() -> str:
    if not shutil.which("nvidia-smi"):
        raise Skip("no NVIDIA GPU here (nvidia-smi not found)")
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise Skip("nvidia-smi sees no GPU")
    return out.stdout.strip().splitlines()[0]


def _check_paddle_gpu() -> None:
    probe = "import numpy, paddle; import sys; sys.exit(0 if paddle.is_compiled_with_cuda() else 3)"
    code = subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode
    if code != 0:
        raise Skip("this interpreter's paddle is not a CUDA build; run scripts/gpu-path")


def _spec(run_dir: Path, data_dir: Path, seq: int, micro: int, steps: int) -> str:
    return f"""
name: gpu-seq{seq}
output_dir: {run_dir}
cluster: {{backend: local}}
resources: {{nodes: 1, gpus_per_node: 1, cpus_per_task: 8}}
data:
  raw_corpus: {data_dir}/corpus.txt
  vocab_file: {data_dir}/vocab.txt
  input_prefix: {data_dir}/corpus
model:
  model_name_or_path: ernie-1.0-base-zh
  random_init: true   # throughput only: the weights do not matter
  vocab_size: 18000
train:
  device: gpu
  engine: static
  use_amp: true
  max_seq_len: {seq}
  micro_batch_size: {micro}
  max_steps: {steps}
  logging_freq: 25
  checkpoint_steps: 100000
  save_steps: 100000
  eval_iters: 0
  num_workers: 4
convert: {{enabled: false}}
"""


def _run_one(tmp: Path, data_dir: Path, seq: int, micro: int, steps: int) -> Dict[str, Any]:
    from ernie_cluster.launch.prepare import prepare_data
    from ernie_cluster.rundir import RunDir
    from ernie_cluster.spec import validate_text

    run_dir = tmp / f"run{seq}"
    spec = validate_text(_spec(run_dir, data_dir, seq, micro, steps), f"gpu-seq{seq}", [])
    run = RunDir(run_dir)
    run.root.mkdir(parents=True)
    run.spec.write_text(spec.to_yaml())
    prepare_data(spec, run)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0")}
    proc = subprocess.run([sys.executable, "-m", "ernie_cluster.train", "--run-dir", str(run_dir)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"trainer exited {proc.returncode} at seq {seq}:\n{text[-3000:]}")
    windows = [(int(s), float(sps), int(tps)) for s, sps, tps in LOG_LINE.findall(text)]
    steady = windows[1:] or windows  # the first window includes program build and warm-up
    return {"samples_per_s": statistics.median(w[1] for w in steady),
            "tokens_per_s": statistics.median(w[2] for w in steady),
            "windows": [w[1] for w in steady]}


def run(quick: bool) -> List[Dict[str, Any]]:
    gpu = _gpu_name()
    _check_paddle_gpu()
    steps = 150 if quick else 400
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        data_dir = tmp / "data"
        subprocess.run([sys.executable, "-m", "data_tools.toy_corpus", "--out-dir", str(data_dir), "--docs", "20000"],
                       check=True, capture_output=True)
        for seq, micro in ((128, 128), (512, 32)):
            result = _run_one(tmp, data_dir, seq, micro, steps)
            published = PUBLISHED_SEQ128 if seq == 128 else None
            rows.append(make_row(
                f"gpu: samples/s per GPU, seq {seq}, AMP, ernie-1.0-base shape", result["samples_per_s"], "samples/s",
                baseline="published ERNIE 1.0 static AMP, V100-16G, seq 128 bs 128 (PaddleNLP PR #1744)" if published else
                "none published at seq 512 (estimate ~200-230/s on V100)",
                baseline_value=published, higher_is_better=True, goal=">= published V100 figure" if published else "",
                goal_met=(result["samples_per_s"] >= published) if published else None, runs=result["windows"],
                machine=f"{gpu}, paddlepaddle-gpu", note=f"micro batch {micro}, {result['tokens_per_s']:.0f} tokens/s"))
    return rows


if __name__ == "__main__":
    raise SystemExit(module_main(run, name="bench_gpu"))
