"""What `frozen_code` records next to the frozen copy without freezing it: the compute interpreter's
`pip freeze` (package versions) and, when the packages come from a git checkout, its commit and diff.

`pip freeze` imports pip and walks every distribution on the path: 0.2-2 s, most of a submission.
Its output changes only when a distribution is installed, removed or upgraded, which adds, removes
or renames a `*.dist-info` entry in a directory on `sys.path` and so changes that directory's mtime.
So the output is cached (`$ERNIE_CLUSTER_CACHE_DIR`, else `$XDG_CACHE_HOME/ernie_cluster`, else
`~/.cache/ernie_cluster`; the newest CACHE_KEEP answers), keyed by the interpreter, the variables that
shape its path, every path entry's mtime and the checkout's commit (pip writes it into an editable VCS
install's line).
Only the interpreter running this code can be keyed without starting it; another one always runs pip.

Standard library only, like `frozen_code`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .frozen_paths import is_inside

PIP_TIMEOUT_S = 120.0  # pip freeze imports pip and walks site-packages; slow on a network file system
GIT_TIMEOUT_S = 60.0
CACHE_ENV = "ERNIE_CLUSTER_CACHE_DIR"
CACHE_FORMAT = 1
CACHE_KEEP = 32  # answers kept (a few KiB each): interpreters x states of their installations
# A directory changed this recently may change again within its mtime's granularity (1 s on some file
# systems) without its mtime moving: such a state is not cached.
SETTLED_S = 2.0
# The environment variables that change what the interpreter puts on sys.path or what pip lists.
PATH_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONUSERBASE", "PIP_USER", "VIRTUAL_ENV")


class PipRun:
    """A started `pip freeze` (or a cached answer, or why it could not start)."""

    def __init__(self, python: str, *, proc: Optional["subprocess.Popen[str]"] = None, output: Optional[str] = None,
                 error: Optional[str] = None, key: Optional[Dict[str, Any]] = None, started: float = 0.0):
        self.python, self.proc, self.output, self.error, self.key, self.started = python, proc, output, error, key, started

    @property
    def cached(self) -> bool:
        return self.proc is None and self.output is not None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def cache_root() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ernie_cluster"


def _stamp(path: str) -> Optional[List[int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_ino, st.st_dev]


def _child_path_entries() -> List[str]:
    """The directories where `python -m pip freeze` (this interpreter, this environment, PYTHONSAFEPATH)
    finds distributions: PYTHONPATH, the site directories and what their .pth files add, and the .pth
    files themselves. Not this process's sys.path, which its program may have changed (a test runner,
    a script's own directory)."""
    import site

    entries = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sites = list(site.getsitepackages())
    if not sys.flags.no_user_site and not os.environ.get("PYTHONNOUSERSITE"):
        sites.append(site.getusersitepackages())
    for directory in sites:
        entries.append(directory)
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".pth"))
        except OSError:
            continue
        for name in names:
            entries.append(os.path.join(directory, name))
            try:
                with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
                    lines = [line.strip() for line in f]
            except OSError:
                continue
            entries += [os.path.join(directory, line) for line in lines if line and not line.startswith(("#", "import"))]
    return list(dict.fromkeys(entries))


def pip_cache_key(python: str, commit: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """What `pip freeze` of `python` depends on, or None when it cannot be known without starting it
    (an interpreter other than this one)."""
    if os.path.abspath(python) != os.path.abspath(sys.executable):
        return None
    return {"format": CACHE_FORMAT, "python": os.path.abspath(python), "executable": _stamp(sys.executable),
            "prefix": sys.prefix, "version": sys.version, "commit": commit,
            "env": {name: os.environ.get(name) for name in PATH_VARIABLES},
            "paths": [[p, _stamp(p)] for p in _child_path_entries()]}


def _cache_file(key: Dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_root() / "pip-freeze" / f"{digest}.json"


def _cache_read(key: Dict[str, Any]) -> Optional[str]:
    try:
        record = json.loads(_cache_file(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    output = record.get("output") if isinstance(record, dict) and record.get("key") == key else None
    return output if isinstance(output, str) else None


def _cache_write(key: Dict[str, Any], output: str, started: float) -> None:
    """Best effort (an unwritable home must not stop a submission); only a settled state is kept, and
    only the CACHE_KEEP newest answers (each interpreter and state of its installation has its own)."""
    stamps = [s[0] for _, s in key["paths"] if s]
    if stamps and max(stamps) / 1e9 > started - SETTLED_S:
        return
    path = _cache_file(key)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"key": key, "output": output}), encoding="utf-8")
        os.replace(tmp, path)
        _cache_prune(path.parent)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


def _cache_prune(directory: Path) -> None:
    """Remove all but the CACHE_KEEP newest answers: only files this module names (32 hex digits .json)."""
    answers = [p for p in directory.iterdir() if len(p.name) == 37 and p.suffix == ".json"
               and all(c in "0123456789abcdef" for c in p.stem)]
    if len(answers) <= CACHE_KEEP:
        return
    for old in sorted(answers, key=lambda p: p.stat().st_mtime)[:-CACHE_KEEP]:
        try:
            old.unlink()
        except OSError:
            pass


def start_pip_freeze(python: str, *, cwd: Optional[Path] = None, commit: Optional[str] = None,
                     use_cache: bool = True) -> PipRun:
    """Start `python -m pip freeze` (it runs while the caller works), or take the cached answer."""
    key = pip_cache_key(python, commit) if use_cache else None
    cached = _cache_read(key) if key is not None else None
    if cached is not None:
        return PipRun(python, output=cached, key=key)
    started = time.time()
    try:
        # PYTHONSAFEPATH: the jobs' view of the installation, not the working directory's packages.
        proc = subprocess.Popen([python, "-m", "pip", "freeze", "--disable-pip-version-check"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                cwd=str(cwd) if cwd else None,
                                env={**os.environ, "PIP_NO_INPUT": "1", "PYTHONSAFEPATH": "1"})
    except OSError as exc:
        return PipRun(python, error=f"{python} -m pip freeze did not run: {exc}")
    return PipRun(python, proc=proc, key=key, started=started)


def finish_pip_freeze(run: PipRun) -> Tuple[Optional[str], Optional[str]]:
    """(`pip freeze` output, None) or (None, why it failed). Never raises: the record is worth having,
    but a compute interpreter without pip must not stop a submission."""
    if run.proc is None:
        return run.output, run.error
    try:
        out, err = run.proc.communicate(timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        run.kill()
        return None, f"{run.python} -m pip freeze took over {PIP_TIMEOUT_S:.0f}s"
    if run.proc.returncode != 0:
        tail = (err or out).strip().splitlines()[-3:]
        return None, f"{run.python} -m pip freeze exited {run.proc.returncode}: {' / '.join(tail)}"
    if run.key is not None:
        _cache_write(run.key, out, run.started)
    return out, None


def pip_freeze(python: str, **kwargs: Any) -> Tuple[Optional[str], Optional[str]]:
    return finish_pip_freeze(start_pip_freeze(python, **kwargs))


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


# ------------------------------------------------------------------------------------------------ git ---

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


def git_commit(top: Optional[Path]) -> Optional[str]:
    return ((_git(top, "rev-parse", "--verify", "HEAD") or "").strip() or None) if top else None


def git_state(sources: Mapping[str, Path], top: Union[Path, None, bool] = True) -> Optional[Tuple[Dict[str, Any], str]]:
    """(git.json content, uncommitted diff) of the checkout `ernie_cluster` comes from, or None.

    The diff and the untracked list cover only the package paths: the run directory is shared with
    whoever reads the logs, and the rest of a checkout may hold files that must not leave it.
    `top`: the checkout's top level when already known (None: not a checkout).
    """
    root = git_toplevel(sources["ernie_cluster"]) if top is True else top
    if not isinstance(root, Path):
        return None
    commit = git_commit(root)
    branch = (_git(root, "rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None
    inside = {name: src for name, src in sources.items() if is_inside(src, root)}
    specs = [src.relative_to(root).as_posix() for src in inside.values()]
    diff = _git(root, "diff", "--no-color", "--no-ext-diff", "--binary", "HEAD", "--", *specs) if commit else None
    untracked = (_git(root, "ls-files", "--others", "--exclude-standard", "--", *specs) or "").splitlines()
    info = {
        "root": str(root), "commit": commit, "branch": None if branch == "HEAD" else branch,
        "dirty": bool(diff) or bool(untracked), "packages": sorted(inside),
        "packages_outside": sorted(set(sources) - set(inside)), "untracked": untracked,
    }
    return info, diff or ""
