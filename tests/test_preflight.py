"""The node pre-flight (`ernie_cluster.launch.preflight`) with real processes and real files: the imports happen
in a subprocess of a real interpreter, the probe files are really written, the disk is really measured, and on
this GPU-less machine the missing nvidia-smi is the real failure a misconfigured node gives. Only the
nvidia-smi parsing tests put a small stand-in `nvidia-smi` script on PATH (there is no GPU here)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from ernie_cluster.launch.preflight import (BYTES_PER_PARAM, GIB, IMPORTS, Check, PreflightReport, check_disk,
                                            check_gpus, check_writable, ernie_num_params, estimate_checkpoint_bytes,
                                            judge_nodes, main, parse_nvidia_smi, preflight_for_spec, run_preflight,
                                            spec_checkpoint_bytes, visible_gpus)
from ernie_cluster.spec import BUILTIN_CONFIGS, JobSpec

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable  # this venv's interpreter: what the trainers run
FAST = ("ernie_cluster", "data_tools._helpers")  # the project's own imports: for tests about the other checks
TINY = {"vocab_size": 616, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 128, "max_position_embeddings": 512, "type_vocab_size": 2}


def trainer_env(**extra: str) -> Dict[str, str]:
    """The environment the trainers get from a checkout: the checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra.pop("PYTHONPATH", ""), str(REPO)) if p)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(extra)
    return env


def run_dir(tmp: Path) -> Path:
    root = tmp / "run"
    (root / "checkpoints").mkdir(parents=True)
    return root


def by_name(report: PreflightReport) -> Dict[str, Check]:
    return {c.name: c for c in report.checks}


def tiny_spec(tmp: Path, **train: object) -> JobSpec:
    vocab = tmp / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "a", "b"]) + "\n")
    return JobSpec.model_validate({
        "name": "preflight", "output_dir": str(tmp / "run"),
        "cluster": {"backend": "slurm", "time": "01:00:00", "requeue": {"signal_lead_s": 30}},
        "resources": {"nodes": 1, "gpus_per_node": 0},
        "data": {"input_prefix": str(tmp / "data" / "corpus"), "vocab_file": str(vocab)},
        "model": {"model_name_or_path": "ernie-1.0-base-zh", "random_init": True, "hidden_size": 64,
                  "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
        "train": {"device": "cpu", "max_steps": 10, **train},
    })


def shadow_helpers(tmp: Path, body: str) -> Path:
    """A directory that, first on PYTHONPATH, shadows the `data_tools` package with one whose compiled helper is
    replaced by `body` (a stale build, a crash, a hung import). The pre-flight then runs outside the checkout:
    `python -c` puts the working directory first on sys.path, as `python -m` does for the trainers."""
    pkg = tmp / "shadow" / "data_tools"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "_helpers.py").write_text(body)
    return pkg.parent


# ------------------------------------------------------------------------------------------- a healthy node


def test_healthy_node_passes_with_real_imports(tmp_path: Path) -> None:
    root = run_dir(tmp_path)
    spec = tiny_spec(tmp_path)
    t0 = time.perf_counter()
    report = preflight_for_spec(spec, root, python=PY, host="node-a", env=trainer_env())
    elapsed = time.perf_counter() - t0
    print(f"\nhealthy pre-flight: {elapsed:.2f}s wall\n{report.describe()}")
    assert report.ok, report.describe()
    checks = by_name(report)
    assert list(checks) == ["python", "gpus", "rundir", "disk"]
    assert f"paddle {__import__('paddle').__version__}" in checks["python"].detail
    for module in IMPORTS:
        assert module in checks["python"].detail
    assert checks["gpus"].skipped and checks["gpus"].status == "skipped"  # a CPU run: skipped, not passed
    assert str(root / "checkpoints") in checks["rundir"].detail
    estimate = spec_checkpoint_bytes(spec)  # from the spec's model, not "unknown"
    assert f"2 x {estimate / (1 << 20):.1f} MiB checkpoint + 1.0 GiB margin" in checks["disk"].detail
    assert sorted(p.name for p in root.rglob("*")) == ["checkpoints"]  # no probe file left behind
    # everything but the imports takes milliseconds; the imports run while the others do
    assert sum(c.seconds for c in report.checks if c.name != "python") < 1.0
    assert report.seconds < 60, "the pre-flight of a healthy node must not take a minute"
    assert report.summary().startswith("preflight passed on node-a")
    for line in report.describe().splitlines():
        assert line.startswith("preflight node-a: ")
    json.dumps(report.to_json())  # the record is JSON as it is


# ------------------------------------------------------------------------------------------ python imports


def test_interpreter_without_the_venv_fails_naming_paddle(tmp_path: Path) -> None:
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not base.is_file() or Path(sys.prefix) == Path(sys.base_prefix):
        pytest.skip("no base interpreter outside a venv here")
    report = run_preflight(python=str(base), run_root=run_dir(tmp_path), gpus_expected=0,
                           checkpoint_bytes_estimate=0, host="node-b", env=trainer_env())
    check = by_name(report)["python"]
    if check.ok:
        pytest.skip(f"{base} has paddle installed itself")
    assert not report.ok and report.failures == [check]
    assert "cannot import paddle" in check.detail and "No module named 'paddle'" in check.detail
    assert "paddlenlp" in check.detail  # the others that failed are listed too
    assert "paddlepaddle" in check.fix and str(base) in check.fix
    assert check.scope == "run"  # a package missing from the environment is missing on every node


def test_stale_compiled_helper_fails_naming_the_module(tmp_path: Path) -> None:
    shadow = shadow_helpers(tmp_path, "raise ImportError('_helpers.so: undefined symbol: _ZN8pybind116detail')\n")
    report = run_preflight(python=PY, run_root=run_dir(tmp_path), gpus_expected=0, checkpoint_bytes_estimate=0,
                           host="node-c", env=trainer_env(PYTHONPATH=str(shadow)), modules=FAST, cwd=tmp_path)
    check = by_name(report)["python"]
    assert not check.ok
    assert "cannot import data_tools._helpers: ImportError:" in check.detail
    assert "undefined symbol" in check.detail
    assert "setup.py compiles data_tools/_helpers.cpp" in check.fix
    assert check.scope == "node"
    assert "preflight node-c: python FAILED" in report.describe()


def test_a_crash_on_import_names_the_module_and_the_signal(tmp_path: Path) -> None:
    shadow = shadow_helpers(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    report = run_preflight(python=PY, run_root=run_dir(tmp_path), gpus_expected=0, checkpoint_bytes_estimate=0,
                           host="node-d", env=trainer_env(PYTHONPATH=str(shadow)), modules=FAST, cwd=tmp_path)
    check = by_name(report)["python"]
    assert not check.ok and check.scope == "node"
    assert "killed by SIGSEGV while importing data_tools._helpers" in check.detail


def test_a_hung_import_is_stopped_at_the_timeout(tmp_path: Path) -> None:
    shadow = shadow_helpers(tmp_path, "import time\ntime.sleep(120)\n")
    t0 = time.perf_counter()
    report = run_preflight(python=PY, run_root=run_dir(tmp_path), gpus_expected=0, checkpoint_bytes_estimate=0,
                           host="node-e", env=trainer_env(PYTHONPATH=str(shadow)), modules=FAST, timeout_s=3,
                           cwd=tmp_path)
    elapsed = time.perf_counter() - t0
    check = by_name(report)["python"]
    assert not check.ok and check.scope == "node"
    assert "still importing data_tools._helpers after 3s" in check.detail
    assert elapsed < 15, f"the hung import was not stopped: {elapsed:.1f}s"


def test_a_missing_interpreter_fails(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-venv" / "bin" / "python")
    report = run_preflight(python=missing, run_root=run_dir(tmp_path), gpus_expected=0, checkpoint_bytes_estimate=0,
                           host="node-f", env=trainer_env())
    check = by_name(report)["python"]
    assert not check.ok and missing in check.detail and "environment.python" in check.fix


# -------------------------------------------------------------------------------------------------- GPUs


def test_gpu_run_on_a_node_without_nvidia_smi_fails(tmp_path: Path) -> None:
    """This machine has no GPU and no nvidia-smi: what a node without a working driver setup gives."""
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    report = run_preflight(python=PY, run_root=run_dir(tmp_path), gpus_expected=1, checkpoint_bytes_estimate=0,
                           host="gpu-node-7", env=trainer_env())
    print("\n" + report.describe())
    checks = by_name(report)
    assert not report.ok
    assert not checks["gpus"].ok and not checks["gpus"].skipped
    assert "nvidia-smi not found on PATH" in checks["gpus"].detail and "drain" in checks["gpus"].fix
    assert checks["gpus"].scope == "node"
    import paddle

    if not paddle.is_compiled_with_cuda():  # this venv's CPU paddle on a GPU run: the second real failure
        assert not checks["python"].ok and "built without CUDA" in checks["python"].detail
        assert "paddlepaddle-gpu" in checks["python"].fix
    assert report.summary().startswith("preflight failed on gpu-node-7: ")
    assert "gpus: nvidia-smi not found" in report.summary()


NVIDIA_SMI_OUTPUT = ("0, GPU-1111aaaa-0000-0000-0000-000000000000, NVIDIA H100 80GB HBM3, 81559 MiB\n"
                     "1, GPU-2222bbbb-0000-0000-0000-000000000000, NVIDIA H100 80GB HBM3, 81559 MiB\n")


def stand_in_nvidia_smi(tmp: Path, script: str) -> Dict[str, str]:
    """PATH with a stand-in `nvidia-smi` (a shell script) first; the check itself runs unchanged."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_nvidia_smi_listing_and_cuda_visible_devices(tmp_path: Path) -> None:
    env = stand_in_nvidia_smi(tmp_path, '[ "$1" = --query-gpu=index,uuid,name,memory.total ] || exit 2\n'
                                        f"printf '{NVIDIA_SMI_OUTPUT}'\n")
    ok = check_gpus(2, env)
    assert ok.ok and "lists 2 GPU(s)" in ok.detail and "NVIDIA H100 80GB HBM3" in ok.detail
    assert check_gpus(3, env).ok is False
    hidden = check_gpus(2, {**env, "CUDA_VISIBLE_DEVICES": "1"})
    assert not hidden.ok and "1 visible through CUDA_VISIBLE_DEVICES='1'" in hidden.detail
    assert check_gpus(2, {**env, "CUDA_VISIBLE_DEVICES": "GPU-2222bbbb,GPU-1111"}).ok


def test_visible_gpus_reads_cuda_visible_devices_as_cuda_does() -> None:
    listed = parse_nvidia_smi(NVIDIA_SMI_OUTPUT)
    assert [g[0] for g in listed] == ["0", "1"] and listed[0][3] == "81559 MiB"
    assert visible_gpus(listed, None) == 2
    assert visible_gpus(listed, "") == 0
    assert visible_gpus(listed, "0,7,1") == 1  # CUDA stops at the first entry that names no GPU
    assert visible_gpus(listed, "1,0") == 2
    assert visible_gpus(listed, "GPU-2222") == 1
    assert visible_gpus(listed, "GPU-9999") == 0


def test_a_broken_or_hung_driver_fails(tmp_path: Path) -> None:
    msg = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
           "latest NVIDIA driver is installed and running.")
    broken = check_gpus(1, stand_in_nvidia_smi(tmp_path, f"cat <<'EOF'\n{msg}\nEOF\nexit 9\n"))
    assert not broken.ok and "couldn't communicate with the NVIDIA driver" in broken.detail
    t0 = time.perf_counter()
    hung = check_gpus(1, stand_in_nvidia_smi(tmp_path, "sleep 60\n"), timeout_s=1)
    assert not hung.ok and "did not answer within 1s" in hung.detail
    assert time.perf_counter() - t0 < 10  # the script's child (sleep) was killed too


# ------------------------------------------------------------------------------------ run directory, disk


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_run_dir_fails(tmp_path: Path) -> None:
    root = run_dir(tmp_path)
    root.chmod(0o500)
    try:
        check = check_writable(root, "node-g")
    finally:
        root.chmod(0o700)
    assert not check.ok and "Permission denied" in check.detail and check.scope == "run"


def test_run_dir_that_is_a_file_or_missing_fails(tmp_path: Path) -> None:
    a_file = tmp_path / "run"
    a_file.write_text("not a directory\n")
    report = run_preflight(python=PY, run_root=a_file, gpus_expected=0, checkpoint_bytes_estimate=0,
                           host="node-h", env=trainer_env(), modules=FAST)
    check = by_name(report)["rundir"]
    assert not check.ok and "ENOTDIR" in check.detail and str(a_file) in check.detail
    assert check.scope == "run"
    missing = check_writable(tmp_path / "nowhere", "node-h")
    assert not missing.ok and "ENOENT" in missing.detail
    assert not check_disk(tmp_path / "nowhere", 0).ok


def test_checkpoints_that_are_not_a_directory_fail(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    (root / "checkpoints").write_text("")
    check = check_writable(root, "node-i")
    assert not check.ok and str(root / "checkpoints") in check.detail


def test_probe_names_are_unique_per_host(tmp_path: Path) -> None:
    """Nodes probing one shared directory at once never collide, and leave nothing behind."""
    root = run_dir(tmp_path)
    assert all(check_writable(root, host).ok for host in ("n1", "n2", "n/3 odd name", "n1"))
    assert sorted(p.name for p in root.rglob("*")) == ["checkpoints"]


def test_disk_requirement_larger_than_the_free_space_fails(tmp_path: Path) -> None:
    root = run_dir(tmp_path)
    free = shutil.disk_usage(root).free
    estimate = free // 2 + GIB  # two of them cannot fit
    report = run_preflight(python=PY, run_root=root, gpus_expected=0, checkpoint_bytes_estimate=estimate,
                           host="node-j", env=trainer_env(), modules=FAST)
    check = by_name(report)["disk"]
    print("\n" + check.line())
    assert not check.ok and report.failures == [check]
    m = re.search(r": ([\d.]+) GiB free, ([\d.]+) GiB needed \(2 x ([\d.]+) GiB checkpoint \+ 1\.0 GiB margin\)",
                  check.detail)
    assert m, check.detail
    assert abs(float(m.group(1)) - free / GIB) < 0.5
    assert float(m.group(2)) == pytest.approx((2 * estimate + GIB) / GIB, abs=0.06)
    assert float(m.group(3)) == pytest.approx(estimate / GIB, abs=0.006)
    assert "GiB on that filesystem" in check.fix
    assert check_disk(root, 10 << 20).ok  # a 10 MiB checkpoint fits


# ------------------------------------------------------------------------------------- checkpoint estimate


def test_estimate_for_ernie_base() -> None:
    n = ernie_num_params(BUILTIN_CONFIGS["ernie-1.0-base-zh"])
    assert n == 100_477_778  # the MLM decoder is tied to the word embedding: counted once
    size = estimate_checkpoint_bytes(n, amp=False)
    assert 1.15e9 < size < 1.3e9  # ~1.2 GB: fp32 weights + two fp32 Adam moments
    assert size == n * BYTES_PER_PARAM + (1 << 20)
    assert 0 < estimate_checkpoint_bytes(n, amp=True) - size <= 1 << 20  # O1: the loss-scaling state only


def test_param_count_matches_paddlenlp() -> None:
    """The count from the config equals the parameters paddlenlp's ErnieForPretraining really has."""
    pytest.importorskip("paddlenlp")
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieForPretraining

    paddle.disable_static()
    model = ErnieForPretraining(ErnieConfig(**TINY, hidden_act="relu", pad_token_id=0))
    real = sum(int(math.prod(p.shape)) for p in model.parameters())
    assert ernie_num_params(TINY) == real == 148_586  # and 598,017 B model_state + 1,199,690 B optimizer saved


def test_estimate_from_a_spec_without_building_the_model(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path)
    # the built-in base config, shrunk by model.*, the 7-line vocab padded to 8
    n = ernie_num_params({**BUILTIN_CONFIGS["ernie-1.0-base-zh"], "vocab_size": 8, "hidden_size": 64,
                          "num_hidden_layers": 2, "intermediate_size": 128})
    assert spec_checkpoint_bytes(spec) == estimate_checkpoint_bytes(n, amp=False)
    assert spec_checkpoint_bytes(tiny_spec(tmp_path, use_amp=True)) == estimate_checkpoint_bytes(n, amp=True)


# ------------------------------------------------------------------------------------------- every node


def report_json(host: str, *failed: Check) -> Dict[str, object]:
    names = {c.name for c in failed}
    passed = [Check(n, True, "fine") for n in ("python", "gpus", "rundir", "disk") if n not in names]
    return PreflightReport(host, PY, [*passed, *failed]).to_json()


def test_judge_nodes_excludes_the_nodes_that_differ() -> None:
    no_gpu = Check("gpus", False, "nvidia-smi not found on PATH")
    verdict = judge_nodes([report_json("n1"), report_json("n2", no_gpu), report_json("n3")])
    assert verdict.exclude == ["n2"] and verdict.everywhere == [] and verdict.retryable


def test_judge_nodes_a_failure_on_every_node_is_no_nodes_fault() -> None:
    missing = Check("python", False, "cannot import paddle", scope="run")
    verdict = judge_nodes([report_json("n1", missing), report_json("n2", missing)])
    assert verdict.everywhere == ["python"] and verdict.exclude == [] and not verdict.retryable
    # even a "node"-scoped failure, when every node has it, is the environment's
    crash = Check("python", False, "killed by SIGSEGV", scope="node")
    assert judge_nodes([report_json("n1", crash), report_json("n2", crash)]).everywhere == ["python"]
    # a "run"-scoped failure on some nodes only is theirs (a broken mount of the shared directory)
    denied = Check("rundir", False, "Permission denied", scope="run")
    assert judge_nodes([report_json("n1", denied), report_json("n2")]).exclude == ["n1"]


def test_judge_nodes_single_node_goes_by_scope() -> None:
    assert judge_nodes([report_json("n1", Check("gpus", False, "x"))]).exclude == ["n1"]
    one = judge_nodes([report_json("n1", Check("disk", False, "full", scope="run"))])
    assert one.everywhere == ["disk"] and not one.retryable
    assert judge_nodes([report_json("n1")]) == judge_nodes([]) == type(one)([], [])


def test_report_lines_and_json() -> None:
    report = PreflightReport("node-k", PY, [Check("python", True, "imports"), Check("gpus", True, "CPU run",
                             skipped=True), Check("disk", False, "1.0 GiB free, 3.2 GiB needed", "free space",
                             scope="run")], 1.5)
    lines: List[str] = report.describe().splitlines()
    assert lines[1] == "preflight node-k: gpus skipped (0.00s): CPU run"
    assert lines[2].endswith("disk FAILED (0.00s): 1.0 GiB free, 3.2 GiB needed -- fix: free space")
    assert not report.ok and [c.name for c in report.failures] == ["disk"] and not report.node_fault
    data = json.loads(json.dumps(report.to_json()))
    assert data["host"] == "node-k" and data["ok"] is False
    assert data["checks"][1]["skipped"] is True and data["checks"][2]["scope"] == "run"


def test_command_line_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = run_dir(tmp_path)
    assert main(["--run-dir", str(root), "--python", str(tmp_path / "missing-python"), "--gpus", "0"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^preflight \S+: python FAILED", out, re.M) and "rundir ok" in out
