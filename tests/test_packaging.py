"""The project installed as a (non-editable) wheel works without the checkout: templates are package
data, the C++ helper is in the wheel, and nothing needs the checkout on PYTHONPATH."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from ernie_cluster import envvars

from helpers_spec import base_spec, write_spec

REPO = Path(__file__).resolve().parent.parent


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


def test_installed_wheel_renders_and_imports_without_the_checkout(tmp_path):
    assert _can_build_wheels(), ("this venv cannot build a wheel without build isolation: "
                                 "install the test extra (`wheel`), as scripts/setup does")
    # Built from a copy, so the build writes no build/ or egg-info into the checkout other tests use.
    src = tmp_path / "src"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    dist, target = tmp_path / "dist", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist), str(src)],
                   check=True, timeout=300)
    wheels = list(dist.glob("ernie_cluster-*.whl"))
    assert len(wheels) == 1, wheels
    subprocess.run(pip + ["install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheels[0])],
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
