"""Training checkpoints: one engine-neutral format, atomic, verified, with fall-back.

The format itself (layout, file names, versions, what each file holds) has one home,
``ckpt_format``; ``ckpt_write`` is the durable collective save (temp dir, fsync, manifest last,
rename, ``model_last``, pruning) and ``write_model_dir`` for snapshots; ``ckpt_async`` writes periodic
checkpoints in the background from a host copy; ``ckpt_io`` checksums every file while writing and reading it
(one pass over the bytes); ``ckpt_read`` finds,
verifies (manifest: every file present, same size and checksum; damaged ones are skipped with a
warning, newest first) and loads.

Import the names from here: ``from ernie_cluster.train.checkpoint import find_latest``.
"""

from __future__ import annotations

from ..durable import fsync_dir, fsync_file, replace_dir, sha256_file  # noqa: F401 - part of this module's API
from .ckpt_format import (ACC_KINDS, ACC_RE, FORMAT_VERSION, LAST_LINK, LOSS_SCALING_KEYS,  # noqa: F401
                          MANIFEST_FILE, MODEL_FILE, OPT_FILE, OPT_FORMAT, STATE_FILE, STEP_GLOB, STEP_RE,
                          TMP_PREFIX, CheckpointError, IncompatibleCheckpoint, build_trainer_state, capture_rng,
                          empty_optimizer_state, get_accumulator, put_accumulator, restore_rng, rng_file,
                          step_dir_name)
from .ckpt_read import (CheckpointInfo, LoadedCheckpoint, compat_differences, find_latest,  # noqa: F401
                        list_step_dirs, load_checkpoint, paddle_load, verify_checkpoint)
from .ckpt_write import (FAIL_SAVE_ENV, HOLD_SAVE_ENV, SLOW_SAVE_ENV, CheckpointManager, paddle_save,  # noqa: F401
                         replace_symlink, write_json, write_model_dir)
from .ckpt_async import CheckpointSaver, estimate_nbytes  # noqa: F401
from .engine_common import Collective  # noqa: F401 - the process-group interface a CheckpointManager uses
