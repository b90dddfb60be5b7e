"""Where a run's frozen code lives, and how a process gets it first on its path.

The light half of `frozen_code` (os, shlex and pathlib only): `render` writes these lines into every
job script and the node launcher builds its children's PYTHONPATH from them, so importing this must
cost nothing (and `import ernie_cluster` seals a frozen copy's imports with `seal_imports`).
Freezing, hashing and comparing are in `frozen_code`.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

PACKAGES = ("ernie_cluster", "data_tools")
CODE_DIR = "code"
SITE_DIR = "site"
MANIFEST = "MANIFEST.json"


def code_dir(run_root: Path) -> Path:
    return Path(run_root) / CODE_DIR


def code_pythonpath(run_root: Path) -> str:
    """The directory to put first on PYTHONPATH so `ernie_cluster` and `data_tools` are the frozen copy."""
    return str((code_dir(run_root) / SITE_DIR).absolute())


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


def frozen_site() -> Optional[Path]:
    """<run>/code/site when this `ernie_cluster` is a run's frozen copy, else None (a checkout or a wheel):
    two name checks, and one stat only inside a directory named code/site."""
    site = Path(__file__).resolve().parents[1]
    code = site.parent
    return site if site.name == SITE_DIR and code.name == CODE_DIR and (code / MANIFEST).is_file() else None


def frozen_run_root() -> Optional[Path]:
    """The run directory whose frozen copy this `ernie_cluster` is, or None (a checkout or a wheel)."""
    site = frozen_site()
    return site.parent.parent if site is not None else None


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
    site = frozen_site()
    if site is None:
        return []
    removed = []
    for finder in list(sys.meta_path):
        mapping = finder_mapping(finder)
        if mapping is None:
            continue
        foreign = [n for n in PACKAGES if n in mapping and not Path(str(mapping[n])).resolve().is_relative_to(site)]
        if foreign:
            sys.meta_path.remove(finder)
            removed.append(getattr(finder, "__module__", type(finder).__name__))
    return removed


def is_inside(path: Path, root: Path) -> bool:
    """Whether `path`, links resolved, lies under `root` (which the caller has resolved)."""
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True
