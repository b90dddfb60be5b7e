"""File names and format versions of a training checkpoint (standard library only).

The one place these names are spelled; ``checkpoint.py`` (the format's home) re-exports them.
Submit-side code (``runs.py``) imports this module directly so that it never pulls in numpy
or paddle. See ``checkpoint.py`` for the layout.
"""

from __future__ import annotations

import re

FORMAT_VERSION = 1                        # MANIFEST.json and trainer_state.json "format"
OPT_FORMAT = "ernie_cluster.adamw.v1"     # optimizer.pdopt "format"
MODEL_FILE = "model_state.pdparams"
OPT_FILE = "optimizer.pdopt"
STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "MANIFEST.json"
LAST_LINK = "model_last"
STEP_GLOB = "step_*"
STEP_RE = re.compile(r"^step_(\d{9})$")
TMP_PREFIX = ".tmp."                      # a save in progress: .tmp.step_<N>


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def rng_file(rank: int) -> str:
    return f"rng_rank{rank:05d}.pkl"
