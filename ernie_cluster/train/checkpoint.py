"""Training checkpoints: one engine-neutral format, atomic, verified, with fall-back.

Layout (``RunDir.checkpoints``)::

    checkpoints/
      model_last -> step_000001000        relative symlink to the newest complete checkpoint
      step_000000500/                     kept: the newest `train.keep_checkpoints` complete ones
      step_000001000/
        model_state.pdparams              {structured name: numpy array} (paddle.save); tied aliases included
        optimizer.pdopt                   {"format", "accumulators": {canonical name: {moment1, moment2,
                                           beta1_pow_acc, beta2_pow_acc}}, "loss_scaling", "extra"}
        trainer_state.json                step, consumed_samples, LR schedule state, spec sha256,
                                           compat key, engine, world size, versions
        rng_rank00000.pkl ...             per rank: python `random` and numpy global states, paddle seed scheme
        MANIFEST.json                     written last: size and sha256 of every other file
      .tmp.step_000001500/                a save in progress (never read; removed by the next save)

The format's home is this module and the ones it gathers, one per concern:

* ``ckpt_names``  file names and format versions (standard library only: submit-side readers);
* ``ckpt_state``  what the files hold: ``build_trainer_state`` (trainer_state.json), the optimizer-state
  layout both engines use (``ACC_KINDS``, ``ACC_RE``, ``empty_optimizer_state`` ...), the RNG state;
* ``ckpt_write``  the durable collective save (temp dir, fsync, manifest last, rename, ``model_last``,
  pruning) and ``write_model_dir`` for snapshots;
* ``ckpt_read``   finding, verifying (manifest: every file present, same size and sha256; damaged ones
  are skipped with a warning, newest first) and loading.

Import the names from here: ``from ernie_cluster.train.checkpoint import find_latest``.
"""

from __future__ import annotations

from ..durable import fsync_dir, fsync_file, replace_dir, sha256_file  # noqa: F401 - part of this module's API
from .ckpt_names import (FORMAT_VERSION, LAST_LINK, MANIFEST_FILE, MODEL_FILE, OPT_FILE, OPT_FORMAT,  # noqa: F401
                         STATE_FILE, STEP_GLOB, STEP_RE, TMP_PREFIX, rng_file, step_dir_name)
from .ckpt_read import (CheckpointInfo, LoadedCheckpoint, compat_differences, find_latest,  # noqa: F401
                        list_step_dirs, load_checkpoint, paddle_load, verify_checkpoint)
from .ckpt_state import (ACC_KINDS, ACC_RE, LOSS_SCALING_KEYS, CheckpointError, IncompatibleCheckpoint,  # noqa: F401
                         build_trainer_state, capture_rng, empty_optimizer_state, get_accumulator, put_accumulator,
                         restore_rng)
from .ckpt_write import (SLOW_SAVE_ENV, CheckpointManager, paddle_save, replace_symlink, write_json,  # noqa: F401
                         write_model_dir)
from .engine_common import Collective  # noqa: F401 - the process-group interface a CheckpointManager uses
