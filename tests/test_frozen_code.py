"""ernie_cluster.frozen_code: the run's code frozen under its run directory at submission.

Real files, real interpreters, real git: freeze into tmp_path, start Python subprocesses with the
environment every attempt gets, and edit only copies (never the package itself, which other work
may be editing while these tests run).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from ernie_cluster import frozen_code as fc

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def _env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    # The inherited environment without anything that already points Python at some code.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH", "PYTHONHOME")}
    env.update(extra or {})
    return env


def _py(code: str, env: Dict[str, str], cwd: Path, *args: str) -> str:
    proc = subprocess.run([PY, *args, "-c", code] if code else [PY, *args], env=env, cwd=str(cwd),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _where(env: Dict[str, str], cwd: Path) -> Dict[str, str]:
    """Where `python -m ernie_cluster.frozen_code where` (an entry point like every job's) imports from."""
    where: Dict[str, str] = json.loads(_py("", env, cwd, "-m", "ernie_cluster.frozen_code", "where"))
    return where


def _writable_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in dst.rglob("*"):
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return dst


def _file_lines(lines: List[str]) -> List[str]:
    return [line for line in lines if not line.startswith(("git commit:", "pip:"))]


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> fc.FrozenCode:
    return fc.freeze_code(tmp_path_factory.mktemp("run") / "run", python=PY)


def test_manifest_lists_every_frozen_file_with_its_sha256(frozen: fc.FrozenCode) -> None:
    site = Path(frozen.pythonpath)
    manifest = fc.read_manifest(frozen.root.parent)
    on_disk = {p.relative_to(site).as_posix(): fc.hash_file(p) for p in site.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert manifest["files"] == on_disk and len(on_disk) == frozen.files
    assert manifest["tree_sha256"] == fc.tree_digest(on_disk) == frozen.tree_sha256
    assert manifest["sources"] == {k: str(v) for k, v in fc.package_sources().items()}
    assert "ernie_cluster/__init__.py" in on_disk and "ernie_cluster/templates/train.sbatch.j2" in on_disk
    assert any(rel.startswith("data_tools/_helpers") and rel.endswith(".so") for rel in on_disk)
    assert not any(rel.endswith((".pyc", ".pyo")) or "/." in "/" + rel for rel in on_disk)
    assert all(not (site / rel).stat().st_mode & 0o222 for rel in on_disk)
    assert sorted(p.name for p in frozen.root.parent.iterdir()) == ["code"]  # no temporary directory left
    assert frozen.pip_freeze_ok and manifest["pip_freeze"]["note"] is None
    assert "submitit==1.5.4" in (frozen.root / fc.PIP_FREEZE).read_text().splitlines()


def test_attempt_environment_imports_the_frozen_copy_even_from_the_checkout(frozen: fc.FrozenCode) -> None:
    env = _env(fc.code_environment(frozen.root.parent, {"PYTHONPATH": "/elsewhere"}))
    assert env["PYTHONPATH"].split(os.pathsep) == [frozen.pythonpath, "/elsewhere"]
    site = Path(frozen.pythonpath)
    # Started in the checkout, as a job submitted from there is: the editable install and the working
    # directory both offer the checkout's packages.
    assert _where(env, REPO) == {"ernie_cluster": str(site / "ernie_cluster"), "data_tools": str(site / "data_tools")}
    out = _py(f"from ernie_cluster import frozen_code as f; print(f.running_frozen({str(frozen.root.parent)!r}))",
              env, REPO)
    assert out.strip() == "None"
    assert fc.running_frozen(frozen.root.parent) is not None  # this test process runs the checkout's code


def test_without_safe_path_the_working_directory_wins(frozen: fc.FrozenCode) -> None:
    """Why code_environment sets PYTHONSAFEPATH: `python -m` puts the working directory before PYTHONPATH."""
    if fc.package_sources()["ernie_cluster"] != REPO / "ernie_cluster":
        pytest.skip("the package is not imported from this checkout")
    env = _env({"PYTHONPATH": frozen.pythonpath})
    assert _where(env, REPO)["ernie_cluster"] == str(REPO / "ernie_cluster")
    assert _where(env, frozen.root.parent)["ernie_cluster"] == str(Path(frozen.pythonpath) / "ernie_cluster")


def test_compiled_helper_runs_from_the_frozen_copy(frozen: fc.FrozenCode) -> None:
    code = (
        "import json, numpy as np, data_tools._helpers as h, data_tools.mapping as m\n"
        "docs = np.array([0, 3, 6, 9, 12], dtype=np.int64); lens = np.full(12, 20, dtype=np.int32)\n"
        "rows, stats = m.build_mapping(docs, lens, 0, 4, 50, 0.0, 1, True, use_cpp=True)\n"
        "ref, ref_stats = m.build_mapping_py(docs, lens, 0, 4, 50, 0.0, 1, True)\n"
        "print(json.dumps([h.__file__, m.__file__, len(rows), bool(np.array_equal(rows, ref)), stats == ref_stats]))\n"
    )
    helper, mapping, n_rows, same, same_stats = json.loads(_py(code, _env(fc.code_environment(frozen.root.parent, {})), REPO))
    site = Path(frozen.pythonpath)
    assert Path(helper).parent == site / "data_tools" and Path(mapping) == site / "data_tools" / "mapping.py"
    assert n_rows > 0 and same and same_stats


def test_compare_reports_each_edited_added_and_removed_file(frozen: fc.FrozenCode, tmp_path: Path) -> None:
    site = Path(frozen.pythonpath)
    installed = _writable_copy(site, tmp_path / "site-packages")  # a second "installed" copy to edit
    sources = {name: installed / name for name in fc.PACKAGES}
    assert _file_lines(fc.compare_code(frozen.root.parent, sources=sources)) == []
    with open(installed / "data_tools" / "vocab.py", "a") as f:
        f.write("\n# edited while the run waited\n")
    (installed / "ernie_cluster" / "extra.py").write_text("X = 1\n")
    (installed / "ernie_cluster" / "templates" / "submit.sh.j2").unlink()
    (installed / "ernie_cluster" / "__pycache__").mkdir(exist_ok=True)
    (installed / "ernie_cluster" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"ignored")
    assert _file_lines(fc.compare_code(frozen.root.parent, sources=sources)) == [
        "changed: data_tools/vocab.py", "added: ernie_cluster/extra.py", "removed: ernie_cluster/templates/submit.sh.j2"]


def test_compare_with_the_current_installation(frozen: fc.FrozenCode, tmp_path: Path) -> None:
    run = tmp_path / "run"
    for _ in range(3):  # other work may edit the checkout between the freeze and the comparison
        fc.freeze_code(run, python=PY)
        if fc.compare_code(run) == []:
            break
    else:
        pytest.fail(f"compare_code right after freeze_code: {fc.compare_code(run)}")
    assert fc.verify_code(run) == []
    target = fc.code_dir(run) / fc.SITE_DIR / "data_tools" / "errors.py"
    target.chmod(0o644)
    target.write_text(target.read_text() + "\n# the frozen copy edited\n")
    (fc.code_dir(run) / fc.SITE_DIR / "ernie_cluster" / "__pycache__").mkdir(exist_ok=True)  # as imports make
    assert fc.verify_code(run) == ["changed: data_tools/errors.py"]
    # compare_code compares the manifest (what was submitted) with the installation, not with the copy
    assert "changed: data_tools/errors.py" not in fc.compare_code(run)


def test_installed_copy_edited_while_the_run_waits(frozen: fc.FrozenCode, tmp_path: Path) -> None:
    """Freeze from a wheel-like installation (no git), edit that installation, run 'the attempt'."""
    installed = _writable_copy(Path(frozen.pythonpath), tmp_path / "site-packages")
    run = tmp_path / "run"
    env = _env({"PYTHONPATH": str(installed), "PYTHONSAFEPATH": "1"})
    _py("", env, tmp_path, "-m", "ernie_cluster.frozen_code", "freeze", str(run), PY)
    manifest = fc.read_manifest(run)
    assert manifest["sources"] == {name: str(installed / name) for name in fc.PACKAGES}
    assert manifest["tree_sha256"] == frozen.tree_sha256 and manifest["git"] is None
    assert not (fc.code_dir(run) / fc.GIT_JSON).exists() and not (fc.code_dir(run) / fc.GIT_DIFF).exists()
    init = installed / "ernie_cluster" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', '__version__ = "edited"'))
    attempt = _env(fc.code_environment(run, {"PYTHONPATH": str(installed)}))  # the installation stays on the path
    assert _py("import ernie_cluster; print(ernie_cluster.__version__)", attempt, tmp_path).strip() == "0.1.0"
    assert _py("import ernie_cluster; print(ernie_cluster.__version__)", env, tmp_path).strip() == "edited"
    sources = {name: installed / name for name in fc.PACKAGES}
    assert fc.compare_code(run, sources=sources) == ["changed: ernie_cluster/__init__.py"]


def test_git_metadata_of_this_checkout(frozen: fc.FrozenCode) -> None:
    top = fc.git_toplevel(Path(fc.package_sources()["ernie_cluster"]))
    if top is None:
        pytest.skip("ernie_cluster is not imported from a git checkout")
    git = json.loads((frozen.root / fc.GIT_JSON).read_text())
    head = subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert git["commit"] == head.stdout.strip() and git["root"] == str(top)
    assert git["packages"] == sorted(fc.PACKAGES) and git["packages_outside"] == []
    assert isinstance(git["dirty"], bool) and isinstance(git["branch"], (str, type(None)))
    diff = (frozen.root / fc.GIT_DIFF).read_text()
    assert git["dirty"] == bool(diff or git["untracked"])
    paths = [line.split(" b/", 1)[1] for line in diff.splitlines() if line.startswith("diff --git ")]
    assert all(p.startswith(("ernie_cluster/", "data_tools/")) for p in paths + git["untracked"])
    assert fc.read_manifest(frozen.root.parent)["git"] == {"commit": git["commit"], "dirty": git["dirty"]}


def test_pip_freeze_failure_is_noted_not_fatal(tmp_path: Path) -> None:
    frozen = fc.freeze_code(tmp_path / "run", python=str(tmp_path / "no-such-python"))
    note = fc.read_manifest(tmp_path / "run")["pip_freeze"]
    assert not frozen.pip_freeze_ok and note["file"] is None and "no-such-python" in note["note"]
    assert not (frozen.root / fc.PIP_FREEZE).exists() and frozen.files > 0


def test_refreeze_replaces_the_copy_atomically(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = fc.freeze_code(run, python=str(tmp_path / "no-such-python"))
    (first.root / "stale").write_text("from the old copy")
    second = fc.freeze_code(run, python=str(tmp_path / "no-such-python"))
    assert not (second.root / "stale").exists() and sorted(p.name for p in run.iterdir()) == ["code"]


def test_only_package_files_are_copied(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / ".hidden").mkdir()
    for rel in ("__init__.py", "sub/mod.py", "sub/__pycache__/mod.cpython-311.pyc", "old.pyc", ".env", ".hidden/key"):
        (pkg / rel).write_text("x")
    (tmp_path / "secret").write_text("outside the package")
    (pkg / "link_out.py").symlink_to(tmp_path / "secret")
    (pkg / "link_in.py").symlink_to(pkg / "sub" / "mod.py")
    (pkg / "dir_out").symlink_to(tmp_path, target_is_directory=True)
    assert [rel for rel, _ in fc.iter_package_files(pkg)] == ["__init__.py", "link_in.py", "sub/mod.py"]


def test_seal_imports_stops_the_editable_finder_filling_gaps(frozen: fc.FrozenCode, tmp_path: Path) -> None:
    """A module missing from the frozen copy must not be loaded from the checkout by its editable finder.
    `import ernie_cluster` seals by itself in a frozen copy (its MANIFEST.json next to site/)."""
    run = tmp_path / "run"
    _writable_copy(frozen.root, fc.code_dir(run))
    (fc.code_dir(run) / fc.SITE_DIR / "ernie_cluster" / "envvars.py").unlink()
    code = ("import importlib, json, sys\nfrom ernie_cluster import frozen_code as f\n"
            "left = [type(m).__module__ for m in sys.meta_path if f.finder_mapping(m)]\n"
            "again = f.seal_imports()\n"
            "try:\n    where = importlib.import_module('ernie_cluster.envvars').__file__\n"
            "except ImportError:\n    where = None\nprint(json.dumps([left, again, where, str(f.frozen_run_root())]))\n")
    env = _env(fc.code_environment(run, {}))
    editable = any(fc.finder_mapping(m) for m in sys.meta_path)

    def run_it() -> List[Any]:
        out: List[Any] = json.loads(subprocess.run([PY, "-c", code], env=env, cwd=str(tmp_path),
                                                   capture_output=True, text=True, check=True).stdout)
        return out

    left, again, where, root = run_it()
    assert (left, again, where, root) == ([], [], None, str(run))
    (fc.code_dir(run) / fc.MANIFEST).unlink()  # no longer a frozen copy: nothing is sealed
    left, again, where, root = run_it()
    assert (again, root) == ([], "None") and bool(left) == editable
    if editable:  # the gap the seal closes: without it the checkout's module fills in
        assert where == str(fc.package_sources()["ernie_cluster"] / "envvars.py")


def test_setup_lines_put_the_frozen_copy_first_in_a_job_shell(frozen: fc.FrozenCode) -> None:
    script = "\n".join([*fc.code_setup_lines(frozen.root.parent),
                        f"exec {PY} -m ernie_cluster.frozen_code where"])
    env = _env({"PYTHONPATH": "/already/set"})
    proc = subprocess.run(["bash", "-c", script], env=env, cwd=str(REPO), capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout)["ernie_cluster"] == str(Path(frozen.pythonpath) / "ernie_cluster")
    proc = subprocess.run(["bash", "-c", "\n".join([*fc.code_setup_lines(frozen.root.parent), 'echo "$PYTHONPATH"'])],
                          env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == os.pathsep.join([frozen.pythonpath, "/already/set"])


def test_setup_lines_without_a_frozen_copy(tmp_path: Path) -> None:
    run = tmp_path / "never-frozen"
    env = _env({"PYTHONPATH": "/already/set"})
    echo = 'echo "PYTHONPATH=$PYTHONPATH"'
    proc = subprocess.run(["bash", "-c", "\n".join([*fc.code_setup_lines(run), echo])], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == "" and "no frozen code" in proc.stderr
    proc = subprocess.run(["bash", "-c", "\n".join([*fc.code_setup_lines(run, required=False), echo])], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "PYTHONPATH=/already/set" and "no frozen code" in proc.stderr


def test_ensure_keeps_refuses_and_freezes_again(frozen: fc.FrozenCode, tmp_path: Path) -> None:
    """What submit --resume and submit.sh do with a run's frozen copy, through the command line."""
    installed = _writable_copy(Path(frozen.pythonpath), tmp_path / "site-packages")
    run = tmp_path / "run"
    env = _env({"PYTHONPATH": str(installed), "PYTHONSAFEPATH": "1", "ERNIE_CLUSTER_CACHE_DIR": str(tmp_path / "cache")})

    def ensure(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([PY, "-m", "ernie_cluster.frozen_code", "ensure", str(run), PY, *extra], env=env,
                              cwd=str(tmp_path), capture_output=True, text=True, timeout=120)

    first = ensure()
    assert first.returncode == 0 and first.stdout.startswith("froze "), first.stderr
    digest = fc.read_manifest(run)["tree_sha256"]
    kept = ensure()
    assert kept.returncode == 0 and kept.stdout.startswith("kept "), kept.stderr
    trainer = installed / "ernie_cluster" / "train" / "trainer.py"
    trainer.write_text(trainer.read_text() + "\n# edited while the run waited\n")
    refused = ensure()
    assert refused.returncode == 2 and refused.stdout == ""
    assert "  changed: ernie_cluster/train/trainer.py\n" in refused.stderr and fc.NEW_CODE_FLAG in refused.stderr
    assert fc.read_manifest(run)["tree_sha256"] == digest  # refused: the frozen copy is untouched
    new = ensure(fc.NEW_CODE_FLAG)
    assert new.returncode == 0 and new.stdout.startswith("froze ") and "changed: ernie_cluster/train/trainer.py" in new.stderr
    frozen_trainer = fc.code_dir(run) / fc.SITE_DIR / "ernie_cluster" / "train" / "trainer.py"
    assert frozen_trainer.read_text() == trainer.read_text() and fc.read_manifest(run)["tree_sha256"] != digest
    # a copy damaged on disk while the installation still holds the same code: frozen again, silently correct
    frozen_trainer.chmod(0o644)
    frozen_trainer.write_text("raise SystemExit('damaged')\n")
    repaired = ensure()
    assert repaired.returncode == 0 and repaired.stdout.startswith("froze ") and "damaged" in repaired.stderr
    assert fc.verify_code(run) == [] and frozen_trainer.read_text() == trainer.read_text()


def test_pip_freeze_is_cached_until_a_distribution_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ernie_cluster import frozen_records as fr

    monkeypatch.setenv(fr.CACHE_ENV, str(tmp_path / "cache"))
    extra = tmp_path / "extra"  # a directory on PYTHONPATH that distributions can appear in
    extra.mkdir()
    past = time.time() - 60
    os.utime(extra, (past, past))  # settled: older than the mtime granularity of any file system
    monkeypatch.setenv("PYTHONPATH", str(extra))
    first = fr.start_pip_freeze(PY)
    out, error = fr.finish_pip_freeze(first)
    assert out is not None and error is None and not first.cached
    second = fr.start_pip_freeze(PY)
    assert second.cached and fr.finish_pip_freeze(second) == (out, None)
    # installing a distribution adds a *.dist-info entry, so its directory's mtime moves: asked again
    info = extra / "fakepkg-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.2.3\n")
    third = fr.start_pip_freeze(PY)
    out3, _ = fr.finish_pip_freeze(third)
    assert not third.cached and "fakepkg==1.2.3" in (out3 or "").splitlines()
    # a state changed within the last seconds is not cached (its mtime may move again unseen)
    assert not fr.start_pip_freeze(PY).cached
    # another interpreter cannot be keyed without starting it: always asked
    assert fr.pip_cache_key(str(tmp_path / "other-python")) is None
    assert fr.diff_pip(out, out3 or "") == ["pip: (absent) -> fakepkg==1.2.3"]


def test_conversion_started_on_other_code_runs_the_frozen_copy(frozen: fc.FrozenCode, tmp_path: Path) -> None:
    """`python -m ernie_cluster.convert` by hand from the checkout: it starts itself again on the run's copy."""
    run = tmp_path / "run"
    _writable_copy(frozen.root, fc.code_dir(run))
    probe = ("import sys, runpy; sys.argv = ['convert', '--run-dir', sys.argv[1], '--help']; "
             "import ernie_cluster.convert as c; print('FROM', c.__file__, flush=True); "
             "runpy.run_module('ernie_cluster.convert', run_name='__main__')")
    proc = subprocess.run([PY, "-c", probe, str(run)], env=_env(), cwd=str(REPO), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "starting again on it" in proc.stderr and "usage: python -m ernie_cluster.convert" in proc.stdout
    started = proc.stdout.splitlines()[0]
    assert started.startswith("FROM ") and not started.startswith(f"FROM {frozen.pythonpath}")  # the checkout's
    # the frozen copy damaged on disk: refused before any work (exit 4), whichever code started it
    target = fc.code_dir(run) / fc.SITE_DIR / "ernie_cluster" / "slurm.py"
    target.write_text(target.read_text() + "\n# edited in the run directory\n")
    proc = subprocess.run([PY, "-m", "ernie_cluster.convert", "--run-dir", str(run)], env=_env(fc.code_environment(run, {})),
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4 and "changed: ernie_cluster/slurm.py" in proc.stderr, proc.stderr
