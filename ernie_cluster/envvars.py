"""The environment of the processes this package starts: which variables may reach
`paddle.distributed.launch` and its trainers, and the PYTHONPATH they (and the tokenizer) get.

paddle.distributed.launch writes its whole environment into the run's logs (`envlog.N`,
`backup_env.N.json` and the first line of its pod log), so secrets never reach it. And it takes
some variables as defaults for its own flags, overriding the command line the node launcher
computed from the Slurm allocation (a stale `PADDLE_MASTER` from an outer job would send every
node to the wrong master), so those are removed too.

Standard library only: the node launcher imports it, and the spec checks `environment.env` with it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

SECRET_NAME = re.compile(
    r"(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIALS?|AUTH)(?:_|$)", re.IGNORECASE)

# paddle 2.6.2, paddle/distributed/launch/context/args_envs.py: env_args_mapping.
PADDLE_LAUNCH_OVERRIDES = frozenset({
    "POD_IP", "PADDLE_MASTER", "PADDLE_DEVICES", "PADDLE_NNODES", "PADDLE_RUN_MODE", "PADDLE_LOG_LEVEL",
    "PADDLE_LOG_OVERWRITE", "PADDLE_SORT_IP", "PADDLE_NPROC_PER_NODE", "PADDLE_JOB_ID", "PADDLE_RANK",
    "PADDLE_LOG_DIR", "PADDLE_MAX_RESTART", "PADDLE_ELASTIC_LEVEL", "PADDLE_ELASTIC_TIMEOUT", "PADDLE_SERVER_NUM",
    "PADDLE_TRAINER_NUM", "PADDLE_SERVERS_ENDPOINTS", "PADDLE_TRAINERS_ENDPOINTS", "PADDLE_GLOO_PORT",
    "PADDLE_WITH_GLOO", "PADDLE_START_PORT", "PADDLE_IPS", "PADDLE_AUTO_PARALLEL_CONFIG",
})


def is_secret(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def launcher_environment(env: Mapping[str, str]) -> Tuple[Dict[str, str], List[str], List[str]]:
    """(the environment for paddle.distributed.launch, secret names dropped, paddle overrides dropped)."""
    kept: Dict[str, str] = {}
    secrets: List[str] = []
    overrides: List[str] = []
    for name, value in env.items():
        if is_secret(name):
            secrets.append(name)
        elif name in PADDLE_LAUNCH_OVERRIDES:
            overrides.append(name)
        else:
            kept[name] = value
    return kept, sorted(secrets), sorted(overrides)


def source_checkout() -> Optional[Path]:
    """The source checkout this ernie_cluster is imported from, or None when it is installed (a wheel)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "data_tools").is_dir() else None


def child_pythonpath(env: Mapping[str, str]) -> str:
    """PYTHONPATH for the interpreters this package starts (trainers, tokenizer), which import
    `ernie_cluster` and `data_tools` with a working directory of their own.

    Running from a run's frozen copy (<run>/code/site, what every job of a submitted run imports), that
    copy goes first, so the children run the submitted code whatever the installation holds now.
    Installed as a wheel, they come from the interpreter's site-packages: PYTHONPATH stays as it is.
    Run from a checkout (`python -m ernie_cluster` there, or an editable install whose finder another
    interpreter lacks), the checkout goes first, so the children import the same code as this process.
    """
    from .frozen_paths import frozen_site

    frozen = frozen_site()
    first = str(frozen) if frozen is not None else str(source_checkout() or "")
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != first]
    return os.pathsep.join(p for p in (first, *rest) if p)
