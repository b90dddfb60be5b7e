"""The code a run executes, frozen under its run directory at submission.

A run can wait in the queue for hours and be requeued for days; in that time the installation it was
submitted from may be edited (a checkout) or upgraded (pip). So `submit` copies the packages the run
will import, as they are imported right now, into the run directory:

    <run>/code/
      site/ernie_cluster/   the package, from wherever `ernie_cluster` is imported (checkout or wheel)
      site/data_tools/      the same for `data_tools`, compiled `_helpers*.so` included
      MANIFEST.json         relative path -> sha256 of every file under site/, a tree digest, provenance
      pip-freeze.txt        `python -m pip freeze` of the compute interpreter (recorded, not frozen)
      git.json, git.diff    only when the packages come from a git checkout: commit, branch, dirty flag,
                            and the uncommitted diff of the package paths (untracked files listed)

Every attempt and the conversion put `code_pythonpath(run)` first on PYTHONPATH (`code_environment`
builds the variables). That is enough against this checkout's editable install: its finder
(`__editable___*_finder.install`) is *appended* to `sys.meta_path`, after the PathFinder that
searches `sys.path`, and PYTHONPATH precedes site-packages there. One thing does beat PYTHONPATH:
`python -m x` and `python -c` put the working directory first on `sys.path`, so a job started from
the checkout would import the checkout. `PYTHONSAFEPATH=1` (Python >= 3.11) turns that off, so
`code_environment` sets it too; `running_frozen` lets a process check what it actually imported.

Standard library only (the node launcher may import it); no paddle, no numpy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from .durable import fsync_dir, fsync_file, replace_dir

PACKAGES = ("ernie_cluster", "data_tools")
CODE_DIR = "code"
SITE_DIR = "site"
MANIFEST = "MANIFEST.json"
PIP_FREEZE = "pip-freeze.txt"
GIT_JSON = "git.json"
GIT_DIFF = "git.diff"
MANIFEST_FORMAT = 1
SKIP_SUFFIXES = (".pyc", ".pyo")
PIP_TIMEOUT_S = 120.0  # pip freeze imports pip and walks site-packages; slow on a network file system
GIT_TIMEOUT_S = 60.0
PipRun = Union["subprocess.Popen[str]", str]  # a started `pip freeze`, or why it could not start


class FrozenCodeError(RuntimeError):
    """The code cannot be frozen (a package not importable) or the frozen copy is missing or damaged."""


@dataclass(frozen=True)
class FrozenCode:
    """What `freeze_code` wrote."""

    root: Path                  # <run>/code
    pythonpath: str             # <run>/code/site: first on PYTHONPATH of every attempt and the conversion
    tree_sha256: str            # digest of every (path, sha256) under site/
    files: int                  # number of files frozen
    sources: Dict[str, str]     # package -> the directory it was copied from
    git: Optional[Dict[str, Any]]  # git.json's content, None when not from a git checkout
    pip_freeze_ok: bool         # False: pip-freeze.txt missing, MANIFEST.json says why
    seconds: float              # how long freezing took


def code_dir(run_root: Path) -> Path:
    return Path(run_root) / CODE_DIR


def code_pythonpath(run_root: Path) -> str:
    """The directory to put first on PYTHONPATH so `ernie_cluster` and `data_tools` are the frozen copy."""
    return str((code_dir(run_root) / SITE_DIR).absolute())


def package_sources() -> Dict[str, Path]:
    """package -> the directory this interpreter imports it from (a checkout, or site-packages).

    `find_spec` asks the same finders `import` would (the editable finder included) without running
    the package; for an already imported package it returns the module's own spec.
    """
    sources: Dict[str, Path] = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise FrozenCodeError(f"package {name!r} is not importable by {sys.executable}; nothing to freeze")
        sources[name] = Path(locations[0]).resolve()
    return sources


def _skipped_name(name: str) -> bool:
    # Dot names (.env, .mypy_cache, editor files) are never part of a package, and may hold secrets.
    return name.startswith(".") or name == "__pycache__" or name.endswith(SKIP_SUFFIXES)


def iter_package_files(src: Path) -> Iterator[Tuple[str, Path]]:
    """(path relative to src, POSIX style; the file) for each file the frozen copy holds, sorted.

    A symbolic link is followed only when it stays inside the package: a link to a file elsewhere
    (a key, a home directory) is not the package's code and must not be copied into a run directory.
    """
    src = src.resolve()
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not _skipped_name(d) and _inside(here / d, src))
        for name in sorted(filenames):
            path = here / name
            if _skipped_name(name) or not _inside(path, src) or not path.is_file():
                continue
            yield path.relative_to(src).as_posix(), path


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _copy_hashed(src: Path, dst: Path, chunk: int = 1 << 20) -> str:
    """Copy one file, return its sha256 (read once for both); `_fsync_all` makes it durable."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while True:
            block = fin.read(chunk)
            if not block:
                break
            digest.update(block)
            fout.write(block)
    # Read-only, executable bits kept (the .so): an edit of the frozen copy has to be deliberate.
    os.chmod(dst, 0o444 | (os.stat(src).st_mode & 0o111))
    return digest.hexdigest()


def _fsync_all(paths: List[Path]) -> None:
    """fsync every file, several at once: ext4 commits concurrent fsyncs in one journal transaction,
    so 90 files take ~0.03 s instead of ~0.7 s one after another (measured on this project's VM)."""
    if paths:
        with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
            list(pool.map(fsync_file, paths))


def hash_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(files: Mapping[str, str]) -> str:
    """One sha256 for a whole tree: over the sorted (relative path, file sha256) pairs."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\0{files[rel]}\n".encode("utf-8"))
    return digest.hexdigest()


def _copy_packages(sources: Mapping[str, Path], site: Path) -> Dict[str, str]:
    """Copy every package into site/<name>/, durably; return site-relative path -> sha256."""
    files: Dict[str, str] = {}
    written: List[Path] = []
    made = set()
    for name, src in sources.items():
        for rel, path in iter_package_files(src):
            dst = site / name / rel
            if dst.parent not in made:
                dst.parent.mkdir(parents=True, exist_ok=True)
                made.add(dst.parent)
            files[f"{name}/{rel}"] = _copy_hashed(path, dst)
            written.append(dst)
    _fsync_all(written)
    for directory in sorted(made, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(directory)  # the entries of each directory, deepest first
    return files


def current_files(sources: Mapping[str, Path]) -> Dict[str, str]:
    """site-relative path -> sha256 of the files a freeze of `sources` would copy now."""
    return {f"{name}/{rel}": hash_file(path) for name, src in sources.items() for rel, path in iter_package_files(src)}


def start_pip_freeze(python: str) -> PipRun:
    """Start `python -m pip freeze` (it runs while the files are copied), or say why it did not start."""
    try:
        return subprocess.Popen([python, "-m", "pip", "freeze", "--disable-pip-version-check"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
    except OSError as exc:
        return f"{python} -m pip freeze did not run: {exc}"


def finish_pip_freeze(proc: PipRun, python: str) -> Tuple[Optional[str], Optional[str]]:
    """(`pip freeze` output, None) or (None, why it failed). Never raises: the record is worth having,
    but a compute interpreter without pip must not stop a submission."""
    if isinstance(proc, str):
        return None, proc
    try:
        out, err = proc.communicate(timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, f"{python} -m pip freeze took over {PIP_TIMEOUT_S:.0f}s"
    if proc.returncode != 0:
        tail = (err or out).strip().splitlines()[-3:]
        return None, f"{python} -m pip freeze exited {proc.returncode}: {' / '.join(tail)}"
    return out, None


def pip_freeze(python: str) -> Tuple[Optional[str], Optional[str]]:
    return finish_pip_freeze(start_pip_freeze(python), python)


def _git(root: Path, *args: str) -> Optional[str]:
    """stdout of a read-only git command, or None when git is missing or fails."""
    # GIT_OPTIONAL_LOCKS=0: `git status` would otherwise refresh (write) the checkout's index.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_toplevel(path: Path) -> Optional[Path]:
    out = _git(path, "rev-parse", "--show-toplevel")
    return Path(out.strip()).resolve() if out and out.strip() else None


def git_state(sources: Mapping[str, Path]) -> Optional[Tuple[Dict[str, Any], str]]:
    """(git.json content, uncommitted diff) of the checkout `ernie_cluster` comes from, or None.

    The diff and the untracked list cover only the package paths: the run directory is shared with
    whoever reads the logs, and the rest of a checkout may hold files that must not leave it.
    """
    top = git_toplevel(sources["ernie_cluster"])
    if top is None:
        return None
    commit = (_git(top, "rev-parse", "--verify", "HEAD") or "").strip() or None
    branch = (_git(top, "rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None
    inside = {name: src for name, src in sources.items() if _inside(src, top)}
    specs = [src.relative_to(top).as_posix() for src in inside.values()]
    diff = _git(top, "diff", "--no-color", "--no-ext-diff", "--binary", "HEAD", "--", *specs) if commit else None
    untracked = (_git(top, "ls-files", "--others", "--exclude-standard", "--", *specs) or "").splitlines()
    info = {
        "root": str(top), "commit": commit, "branch": None if branch == "HEAD" else branch,
        "dirty": bool(diff) or bool(untracked), "packages": sorted(inside),
        "packages_outside": sorted(set(sources) - set(inside)), "untracked": untracked,
    }
    return info, diff or ""


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _write_records(tmp: Path, manifest: Dict[str, Any], pip: PipRun, python: str,
                   sources: Mapping[str, Path]) -> Tuple[Optional[Dict[str, Any]], bool]:
    """pip-freeze.txt, git.json, git.diff into `tmp`; their outcome into `manifest`."""
    frozen, note = finish_pip_freeze(pip, python)
    if frozen is not None:
        _write_text(tmp / PIP_FREEZE, frozen)
    manifest["pip_freeze"] = {"python": python, "file": PIP_FREEZE if frozen is not None else None, "note": note}
    state = git_state(sources)
    info = state[0] if state else None
    if state:
        _write_text(tmp / GIT_JSON, json.dumps(info, indent=2, sort_keys=True) + "\n")
        _write_text(tmp / GIT_DIFF, state[1])
    manifest["git"] = {"commit": info["commit"], "dirty": info["dirty"]} if info else None
    return info, frozen is not None


def freeze_code(run_root: Path, *, python: str) -> FrozenCode:
    """Copy the code a run executes into `<run_root>/code`, replacing an older copy atomically.

    Built in a temporary directory next to it, every file fsynced, then renamed into place
    (durable.replace_dir): a crash leaves the old copy or the new one, never a mix.
    """
    started = time.monotonic()
    run_root = Path(run_root)
    sources = package_sources()
    run_root.mkdir(parents=True, exist_ok=True)
    tmp = run_root / f".{CODE_DIR}.tmp-{os.getpid()}-{time.time_ns()}"
    pip = start_pip_freeze(python)
    try:
        tmp.mkdir()
        files = _copy_packages(sources, tmp / SITE_DIR)
        fsync_dir(tmp / SITE_DIR)
        manifest: Dict[str, Any] = {
            "format": MANIFEST_FORMAT, "created_at": time.time(), "frozen_by": sys.executable,
            "sources": {name: str(src) for name, src in sources.items()},
            "tree_sha256": tree_digest(files), "files": files,
        }
        info, pip_ok = _write_records(tmp, manifest, pip, python, sources)
        _write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        fsync_dir(tmp)
        replace_dir(tmp, code_dir(run_root))
    except BaseException:
        if not isinstance(pip, str) and pip.poll() is None:
            pip.kill()
            pip.communicate()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FrozenCode(code_dir(run_root), code_pythonpath(run_root), manifest["tree_sha256"], len(files),
                      manifest["sources"], info, pip_ok, time.monotonic() - started)


def read_manifest(run_root: Path) -> Dict[str, Any]:
    path = code_dir(run_root) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FrozenCodeError(f"{path} is missing: the run's code was not frozen (submitted by an older ernie_cluster?)") from None
    except ValueError as exc:
        raise FrozenCodeError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise FrozenCodeError(f"{path} has no 'files' table")
    return manifest


def diff_files(frozen: Mapping[str, str], now: Mapping[str, str]) -> List[str]:
    """One line per file that differs, sorted by path: 'changed: p', 'added: p' (only now), 'removed: p'."""
    lines = []
    for rel in sorted(set(frozen) | set(now)):
        if rel not in now:
            lines.append(f"removed: {rel}")
        elif rel not in frozen:
            lines.append(f"added: {rel}")
        elif frozen[rel] != now[rel]:
            lines.append(f"changed: {rel}")
    return lines


def _pip_lines(text: str) -> Dict[str, str]:
    # Keyed by the distribution name so an upgrade reads as one change, not a removal and an addition.
    out: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key = line.split("==")[0].split(" @ ")[0].strip().lower() if not line.startswith("-e ") else line
            out[key] = line
    return out


def diff_pip(frozen_text: str, now_text: str) -> List[str]:
    frozen, now = _pip_lines(frozen_text), _pip_lines(now_text)
    lines = []
    for key in sorted(set(frozen) | set(now)):
        if frozen.get(key) != now.get(key):
            lines.append(f"pip: {frozen.get(key, '(absent)')} -> {now.get(key, '(absent)')}")
    return lines


def verify_code(run_root: Path) -> List[str]:
    """What differs between the frozen copy on disk and its manifest; [] when intact.

    For an attempt to check before it starts: the copy is read-only, but nothing stops an owner
    from making it writable and editing it, or a file system from losing a file.
    """
    manifest = read_manifest(run_root)
    site = Path(code_pythonpath(run_root))
    return diff_files(manifest["files"], current_files({name: site / name for name in PACKAGES}))


def compare_code(run_root: Path, *, sources: Optional[Mapping[str, Path]] = None, python: Optional[str] = None) -> List[str]:
    """What differs between the run's frozen code and the code importable now; [] when identical.

    Files are compared by sha256 (`sources` defaults to where this interpreter imports the packages);
    the git commit when both sides come from a git checkout, or when only one does. With `python`,
    its `pip freeze` is compared with the recorded one too (package versions are recorded, not frozen).
    """
    manifest = read_manifest(run_root)
    sources = {name: Path(p) for name, p in (sources or package_sources()).items()}
    lines = diff_files(manifest["files"], current_files(sources))
    frozen_commit = (manifest.get("git") or {}).get("commit")
    top = git_toplevel(sources["ernie_cluster"]) if "ernie_cluster" in sources else None
    now_commit = ((_git(top, "rev-parse", "--verify", "HEAD") or "").strip() or None) if top else None
    if frozen_commit != now_commit:
        lines.append(f"git commit: {frozen_commit or '(not a git checkout)'} -> {now_commit or '(not a git checkout)'}")
    pip_file = code_dir(run_root) / PIP_FREEZE
    if python is not None and pip_file.is_file():
        now_text, _ = pip_freeze(python)
        if now_text is not None:
            lines += diff_pip(pip_file.read_text(encoding="utf-8"), now_text)
    return lines


def code_environment(run_root: Path, env: Mapping[str, str]) -> Dict[str, str]:
    """PYTHONPATH (the frozen copy first, once) and PYTHONSAFEPATH for a process that must run the
    frozen code; merge into the child's environment after everything else that sets PYTHONPATH."""
    frozen = code_pythonpath(run_root)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != frozen]
    # PYTHONSAFEPATH: no working directory first on sys.path for -m/-c (a job started in a checkout).
    return {"PYTHONPATH": os.pathsep.join([frozen, *rest]), "PYTHONSAFEPATH": "1"}


def code_setup_lines(run_root: Path, *, required: bool = True) -> List[str]:
    """The same as shell lines for an sbatch script: after the spec's setup lines, before any python.

    required: a missing frozen copy ends the job (exit 2) instead of quietly running whatever is
    installed; otherwise (a plain `sbatch` of a rendered script, no `submit`) it says so on stderr.
    """
    code = code_dir(run_root)
    manifest = shlex.quote(str(code / MANIFEST))
    export = [f'export PYTHONPATH={shlex.quote(code_pythonpath(run_root))}"${{PYTHONPATH:+:$PYTHONPATH}}"',
              "export PYTHONSAFEPATH=1"]
    note = f"ernie_cluster: no frozen code in {code} (python -m ernie_cluster.frozen_code freeze RUN_DIR)"
    missing = f"echo {shlex.quote(note)} >&2"
    if required:
        return [f"[ -f {manifest} ] || {{ {missing}; exit 2; }}", *export]
    return [f"if [ -f {manifest} ]; then {'; '.join(export)}; else {missing}; fi"]


def running_frozen(run_root: Path) -> Optional[str]:
    """None when this interpreter imports both packages from the run's frozen copy, else why not.

    For the node launcher and the conversion to check before they start work: a launch that lost the
    PYTHONPATH (a setup line that overwrote it, Python < 3.11 started in a checkout) shows up here.
    """
    site = Path(code_pythonpath(run_root)).resolve()
    wrong = {name: src for name, src in package_sources().items() if not _inside(src, site)}
    if not wrong:
        return None
    where = ", ".join(f"{name} from {src}" for name, src in sorted(wrong.items()))
    return f"not running the run's frozen code ({site}): {where}"


def frozen_run_root() -> Optional[Path]:
    """The run directory whose frozen copy this `ernie_cluster` is, or None (a checkout or a wheel)."""
    site = Path(__file__).resolve().parents[1]
    code = site.parent
    return code.parent if site.name == SITE_DIR and code.name == CODE_DIR and (code / MANIFEST).is_file() else None


def finder_mapping(finder: object) -> Optional[Dict[str, Any]]:
    """package -> directory of a setuptools editable finder (a module-level MAPPING next to the finder
    class), None for any other finder."""
    module = sys.modules.get(getattr(finder, "__module__", "") or "")
    mapping = getattr(finder, "MAPPING", None) or getattr(module, "MAPPING", None)
    return mapping if isinstance(mapping, dict) else None


def seal_imports() -> List[str]:
    """In a frozen copy, drop the import finders that map our packages elsewhere; return their names.

    PYTHONPATH makes `ernie_cluster` and `data_tools` themselves the frozen copy, but a setuptools
    editable finder (`__editable___*_finder._EditableFinder`, appended to sys.meta_path) still answers
    for a *submodule* the frozen copy lacks, loading it from the checkout: a module added there after
    submission would mix new code into the run. Removing those finders makes such an import fail.
    """
    root = frozen_run_root()
    if root is None:
        return []
    site = Path(code_pythonpath(root)).resolve()
    removed = []
    for finder in list(sys.meta_path):
        mapping = finder_mapping(finder)
        if mapping is None:
            continue
        foreign = [n for n in PACKAGES if n in mapping and not _inside(Path(str(mapping[n])), site)]
        if foreign:
            sys.meta_path.remove(finder)
            removed.append(getattr(finder, "__module__", type(finder).__name__))
    return removed


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m ernie_cluster.frozen_code where | freeze RUN [PYTHON] | diff RUN [PYTHON]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["where"]:
        print(json.dumps({name: str(src) for name, src in package_sources().items()}))
        return 0
    if len(args) in (2, 3) and args[0] == "freeze":
        frozen = freeze_code(Path(args[1]), python=args[2] if len(args) == 3 else sys.executable)
        print(f"froze {frozen.files} files ({frozen.tree_sha256[:12]}) into {frozen.root} in {frozen.seconds:.2f}s")
        return 0
    if len(args) in (2, 3) and args[0] == "diff":
        lines = compare_code(Path(args[1]), python=args[2] if len(args) == 3 else None)
        print("\n".join(lines) if lines else "identical")
        return 1 if lines else 0
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
