"""The project installed as a (non-editable) wheel works without the checkout: templates are package
data, the C++ helper is in the wheel, and nothing needs the checkout on PYTHONPATH. Installed into a new
venv outside the checkout, it renders, submits to the local Slurm, trains and converts (slurm marker)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import yaml

from ernie_cluster import envvars

from helpers_spec import base_spec, write_spec

REPO = Path(__file__).resolve().parent.parent
PIP = ["-m", "pip", "--disable-pip-version-check", "--no-input"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _source_files() -> list:
    """What a fresh clone of the working tree holds: tracked and untracked-but-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         check=True, capture_output=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (REPO / f).is_file()})


def _can_build_wheels() -> bool:
    # setuptools >= 70.1 has bdist_wheel itself; older ones need the `wheel` package (the test extra).
    return importlib.util.find_spec("wheel") is not None or importlib.util.find_spec("setuptools.command.bdist_wheel") is not None


def test_source_checkout_goes_first_on_the_childrens_path_only_from_a_checkout():
    assert envvars.source_checkout() == REPO  # these tests import the checkout
    assert envvars.child_pythonpath({"PYTHONPATH": "/x"}) == os.pathsep.join([str(REPO), "/x"])
    assert envvars.child_pythonpath({}) == str(REPO)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built once per module from a copy of the working tree."""
    assert _can_build_wheels(), ("this venv cannot build a wheel without build isolation: "
                                 "install the test extra (`wheel`), as scripts/setup does")
    # Built from a copy, so the build writes no build/ or egg-info into the checkout other tests use.
    root = tmp_path_factory.mktemp("wheel")
    src, dist = root / "src", root / "dist"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    subprocess.run([sys.executable, *PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(dist), str(src)], check=True, timeout=300)
    wheels = list(dist.glob("ernie_cluster-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_installed_wheel_renders_and_imports_without_the_checkout(tmp_path, wheel):
    target = tmp_path / "site"
    subprocess.run([sys.executable, *PIP, "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=120)

    spec = write_spec(tmp_path / "spec.yaml", base_spec(tmp_path))
    work = tmp_path / "elsewhere"
    work.mkdir()
    # -S: no .pth files, so the venv's editable-install finder cannot lead back to the checkout; the
    # dependencies come from the venv's site-packages, the project from the installed wheel only.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = os.pathsep.join([str(target), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    py = [sys.executable, "-S"]

    probe = subprocess.run(py + ["-c", (
        "import sys, ernie_cluster, data_tools._helpers as h; from ernie_cluster import envvars, render;"
        "print(ernie_cluster.__file__); print(h.__file__); print(render.TEMPLATES_DIR);"
        "print(envvars.source_checkout()); print(envvars.child_pythonpath({'PYTHONPATH': '/x'}));"
        "print(any(p.rstrip('/') == %r for p in sys.path))" % str(REPO))],
        cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    pkg, helpers, templates, checkout, pythonpath, repo_on_path = probe.stdout.splitlines()
    assert Path(pkg).is_relative_to(target) and Path(helpers).is_relative_to(target), probe.stdout
    assert Path(templates) == target / "ernie_cluster" / "templates"
    assert (checkout, pythonpath, repo_on_path) == ("None", "/x", "False")

    out = subprocess.run(py + ["-m", "ernie_cluster", "render", str(spec), "--sbatch", "--skip-path-checks"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "rendered from templates/train.sbatch.j2" in out.stdout
    assert "rendered from templates/convert.sbatch.j2" in out.stdout
    assert "#SBATCH" in out.stdout and " -m ernie_cluster.launch --run-dir " in out.stdout


def _outside_env() -> dict:
    """The environment of a user of the installed wheel: nothing points into the checkout. PATH keeps no
    directory of the checkout (its .venv/bin), so a bare `python` in a job would not find the main venv;
    bytecode writing is on, so the new venv's site-packages record which of its modules each process imported."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONSTARTUP", "PYTHONDONTWRITEBYTECODE", "PYTHONNOUSERSITE",
            "VIRTUAL_ENV", "PYTHONEXECUTABLE", "ERNIE_CLUSTER_LOSS_LOG")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not Path(p).resolve().is_relative_to(REPO))
    return env


def _new_venv_with_the_wheel(root: Path, wheel: Path, env: dict) -> tuple:
    """A venv outside the checkout with the wheel installed (and no bytecode compiled at install time). The heavy
    dependencies are not downloaded again: a .pth path line appends the main venv's site-packages to sys.path;
    site does not process the .pth files in a directory added that way, so the main venv's editable finder
    (and its other .pth hooks) stay inactive."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, env=env, cwd=root)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True, env=env, cwd=root).stdout.strip())
    assert site.is_relative_to(venv), site
    deps = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_ernie_cluster_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    # --ignore-installed: the main venv's editable ernie_cluster is visible to this pip through that path line;
    # the wheel must go into the new venv regardless, and nothing outside the new venv is ever uninstalled.
    subprocess.run([str(py), *PIP, "install", "--no-deps", "--no-index", "--ignore-installed", "--no-compile", "-q",
                    str(wheel)], check=True, timeout=300, env=env, cwd=root)
    return py, site


def _pyc(site: Path, module: str) -> Path:
    *package, name = module.split(".")
    return site.joinpath(*package, "__pycache__", f"{name}.{sys.implementation.cache_tag}.pyc")


# modules only the jobs import (never render, submit or status): their bytecode appears in the new venv's
# site-packages exactly when a job's interpreter imported them from there
JOB_ONLY_MODULES = ("ernie_cluster.train.trainer", "ernie_cluster.train.engine_dynamic", "ernie_cluster.convert",
                    "data_tools.create_pretraining_data")


@pytest.mark.slurm
def test_wheel_in_a_new_venv_renders_submits_to_slurm_trains_and_converts(slurm_cluster, wheel, tmp_path):
    env = _outside_env()
    py, site = _new_venv_with_the_wheel(tmp_path, wheel, env)
    work = tmp_path / "elsewhere"
    work.mkdir()

    def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(py), "-m", "ernie_cluster", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, f"ernie_cluster {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    probe = subprocess.run([str(py), "-c", (
        "import sys, importlib.util, ernie_cluster, data_tools._helpers as h; from ernie_cluster import envvars;"
        "print(ernie_cluster.__file__); print(h.__file__); print(envvars.source_checkout());"
        "print(repr(envvars.child_pythonpath({})));"
        "print(any(p.rstrip('/') == %r for p in sys.path));"
        "print([type(f).__module__ for f in sys.meta_path if 'editable' in type(f).__module__]);"
        "print(importlib.util.find_spec('paddle').origin); print(importlib.util.find_spec('submitit').origin)"
        % str(REPO))], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    pkg, helpers, checkout, pythonpath, repo_on_path, editable, paddle, submitit = probe.stdout.splitlines()
    assert Path(pkg) == site / "ernie_cluster" / "__init__.py" and Path(helpers).is_relative_to(site), probe.stdout
    assert (checkout, pythonpath, repo_on_path, editable) == ("None", "''", "False", "[]"), probe.stdout
    # the dependencies come from the main venv, unchanged (nothing was downloaded)
    assert Path(paddle).is_relative_to(sysconfig.get_paths()["platlib"]) and Path(submitit).is_relative_to(
        sysconfig.get_paths()["purelib"]), probe.stdout

    # A tiny run like jobs/ernie_tiny_slurm.yaml, on one node, with its own copy of the toy corpus.
    data = tmp_path / "data"
    data.mkdir()
    for name in ("corpus.txt", "vocab.txt"):
        shutil.copy2(REPO / "jobs" / "data" / "toy" / name, data / name)
    spec = yaml.safe_load((REPO / "jobs" / "ernie_tiny_slurm.yaml").read_text())
    max_steps = 20
    run = tmp_path / "run"
    spec.update(name="wheel-venv", output_dir=str(run))
    spec["environment"]["python"] = str(py)
    spec["resources"].update(nodes=1, procs_per_node=1, cpus_per_task=2)
    spec["data"].update(raw_corpus=str(data / "corpus.txt"), vocab_file=str(data / "vocab.txt"),
                        input_prefix=str(data / "toy"))
    spec["train"].update(max_steps=max_steps, global_batch_size=8, checkpoint_steps=10, save_steps=max_steps,
                         logging_freq=10, eval_freq=max_steps, eval_iters=1)
    spec_path = write_spec(tmp_path / "spec.yaml", spec)

    rendered = cli("render", str(spec_path), "--sbatch").stdout
    assert "rendered from templates/train.sbatch.j2" in rendered and "rendered from templates/convert.sbatch.j2" in rendered
    assert f"{py} -m ernie_cluster.launch --run-dir " in rendered, rendered
    assert str(REPO) not in rendered, "nothing rendered from the installed wheel may point into the checkout"
    for module in JOB_ONLY_MODULES:
        assert not _pyc(site, module).exists(), f"{module} imported before any job ran"

    loss_log = tmp_path / "loss.jsonl"
    env["ERNIE_CLUSTER_LOSS_LOG"] = str(loss_log)  # reaches the jobs: sbatch exports the submitting environment
    out = cli("submit", str(spec_path)).stdout
    ids = dict(re.findall(r"^(training|conversion) job: (\d+)", out, re.M))
    assert set(ids) == {"training", "conversion"}, out
    try:
        def status() -> dict:
            return json.loads(cli("status", str(run), "--json").stdout)

        deadline = time.monotonic() + 420
        while True:
            states = slurm_cluster.sacct_states(ids["conversion"])
            if states and states[-1] in TERMINAL:
                break
            assert time.monotonic() < deadline, f"training and conversion did not finish in time: {status()}"
            time.sleep(2)
    finally:
        slurm_cluster.run("scancel", *ids.values(), check=False)

    node0 = run / "logs" / f"attempt-{ids['training']}-0" / "node0"
    launcher = (node0 / "launcher.log").read_text() if (node0 / "launcher.log").exists() else "(no launcher.log)"
    worker = (node0 / "workerlog.0").read_text() if (node0 / "workerlog.0").exists() else "(no workerlog.0)"
    assert slurm_cluster.sacct_states(ids["training"]) == ["COMPLETED"], launcher + worker[-4000:]
    assert states == ["COMPLETED"], "\n".join(f"{p}:\n{p.read_text()[-3000:]}" for p in (run / "slurm").rglob("*_log.*"))

    # It trained: every step logged a finite loss, the final checkpoint is at max_steps, the conversion passed.
    st = status()
    assert {j["kind"]: j["job_id"] for j in st["jobs"]} == {"train": ids["training"], "convert": ids["conversion"]}
    assert st["checkpoint"]["step"] == max_steps, st
    assert [a["reason"] for a in st["attempts"]] == ["completed"], st["attempts"]
    assert st["conversion"]["passed"] is True, st["conversion"]
    losses = {rec["step"]: rec["loss"] for rec in map(json.loads, loss_log.read_text().splitlines())}
    assert sorted(losses) == list(range(1, max_steps + 1)) and all(math.isfinite(v) for v in losses.values())
    assert re.search(rf"step {max_steps}/{max_steps} \| loss \d", worker), worker[-4000:]
    assert (run / "converted" / "model_state.pdparams").is_file() and (run / "converted" / "config.json").is_file()

    # ... with the new venv's interpreter and the wheel's code, never the checkout's.
    argv = re.search(r"argv: (.*)", launcher).group(1).split()
    assert argv[0] == str(py) and argv[argv.index("-u") - 1] == str(py), argv
    assert argv[argv.index("-u") + 1:argv.index("-u") + 3] == ["-m", "ernie_cluster.train"], argv
    trainer_env = dict(line.split("=", 1) for line in (node0 / "envlog.0").read_text().splitlines() if "=" in line)
    assert str(REPO) not in trainer_env.get("PYTHONPATH", ""), trainer_env.get("PYTHONPATH")
    convert_out = "\n".join(p.read_text() for p in (run / "slurm").rglob(f"{ids['conversion']}_*.out"))
    assert f"ernie_cluster: running {py} -m ernie_cluster.convert" in convert_out, convert_out[-3000:]
    # submit froze the wheel's code from the new venv into the run; the jobs imported that frozen copy.
    sources = json.loads((run / "code" / "MANIFEST.json").read_text())["sources"]
    assert {name: Path(src) for name, src in sources.items()} == {
        "ernie_cluster": site / "ernie_cluster", "data_tools": site / "data_tools"}, sources
    for module in JOB_ONLY_MODULES:
        assert _pyc(run / "code" / "site", module).is_file(), f"the jobs did not import {module} from the frozen copy"
        assert not _pyc(site, module).exists(), f"a job imported {module} from the venv, not the run's frozen copy"
