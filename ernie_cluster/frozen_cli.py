"""`python -m ernie_cluster.frozen_code where | freeze RUN [PYTHON] | diff RUN [PYTHON] | ensure RUN [PYTHON] [--new-code]`.

where   where this interpreter imports ernie_cluster and data_tools from (JSON)
freeze  freeze the code into RUN/code (replacing a frozen copy)
diff    what differs between RUN's frozen code and the installation (exit 1 when anything does)
ensure  what submit.sh runs before its sbatch calls: freeze when RUN has no frozen copy, keep an
        identical one, refuse (exit 2) a different one unless --new-code
PYTHON is the compute nodes' interpreter, whose `pip freeze` is recorded (default: this one); `-`: none (it
runs inside a container image, environment.container).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

from .frozen_code import NEW_CODE_FLAG, CodeChanged, compare_code, ensure_frozen, freeze_code, package_sources


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    new_code = NEW_CODE_FLAG in args
    args = [a for a in args if a != NEW_CODE_FLAG]
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command == "where" and not rest:
        print(json.dumps({name: str(src) for name, src in package_sources().items()}))
        return 0
    if command not in ("freeze", "diff", "ensure") or len(rest) not in (1, 2) or (new_code and command != "ensure"):
        print(__doc__, file=sys.stderr)
        return 2
    run, python = Path(rest[0]), rest[1] if len(rest) == 2 else sys.executable
    compute: Optional[str] = None if python == "-" else python
    if command == "diff":
        lines = compare_code(run, python=compute if len(rest) == 2 else None)
        print("\n".join(lines) if lines else "identical")
        return 1 if lines else 0
    try:
        frozen = freeze_code(run, python=compute) if command == "freeze" else ensure_frozen(
            run, python=compute, new_code=new_code, log=lambda text: print(text, file=sys.stderr))
    except CodeChanged as exc:
        print(f"ernie_cluster: {exc}", file=sys.stderr)
        return 2
    if frozen is None:
        print(f"kept the frozen code in {run / 'code'}: the installation holds the same code")
    else:
        print(f"froze {frozen.files} files ({frozen.tree_sha256[:12]}) into {frozen.root} in {frozen.seconds:.2f}s")
    return 0
