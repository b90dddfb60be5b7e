"""The training program every trainer process runs: `python -m ernie_cluster.train --run-dir RUN`.

Start-up: read RUN/spec.yaml, write the pid file, install the stop-flag handlers, open the
datasets, build the engine (static Fleet or dynamic data parallel), resume from the newest
complete compatible checkpoint (rank 0 chooses, all ranks agree), else start from the
model directory's weights (every tensor, verified: `model.starting_weights`; logged as
`initialised weights from <dir>: <summary>`, evaluated on the validation split at step 0,
recorded in VisualDL and in every checkpoint's trainer_state.json), or from random weights
with model.random_init.

Loop, at every step boundary: the ranks agree (one max all-reduce) on "continue / stop
signal / non-finite loss"; a stop saves a checkpoint at that boundary and exits 0 with
exit.<rank>.json {"reason": "stopped"}; a non-finite loss exits 4 with {"reason": "failed"}.
Periodic checkpoints every `checkpoint_steps`, snapshots every `save_steps`, evaluation
every `eval_freq`; at max_steps a final checkpoint, a snapshot and the test-split
evaluation, then {"reason": "completed"} and exit 0.

Exit codes: 0 completed or stopped; 3 setup problem (incompatible checkpoint, bad model
config, data); 4 non-finite loss; 1 anything else. Every non-zero exit writes
{"reason": "failed", "error": ...} so the launcher never requeues a hopeless run.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

log = logging.getLogger("ernie_cluster.train")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_SETUP = 3
EXIT_NONFINITE = 4

CODE_CONTINUE = 0
CODE_STOP = 1
CODE_FAIL = 2
NO_CHECKPOINT = -1
REFUSED = -2
NOT_RANK0 = -(2 ** 62)


# Test hooks: behave as if a stop signal arrived right after this step; crash rank 0 once after step N
# (`N:<marker file>`: the marker makes it once per run, as a transient fault would be).
STOP_AT_ENV = "ERNIE_CLUSTER_TEST_STOP_AT_STEP"
CRASH_ONCE_ENV = "ERNIE_CLUSTER_TEST_CRASH_ONCE"


class NonFiniteLoss(RuntimeError):
    pass


def setup_logging(rank: int) -> None:
    root = logging.getLogger("ernie_cluster")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def quiet_paddle_env() -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("FLAGS_call_stack_level", "1")


def create_engine(spec, dist, config, schedule):
    engine = spec.train.resolved_engine
    if engine == "static":
        if spec.train.device == "cpu" and dist.world_size > 1:
            raise RuntimeError("the static engine cannot run several processes on the CPU; use engine: dynamic")
        from .engine_static import StaticEngine

        return StaticEngine(spec, dist, config, schedule)
    from .engine_dynamic import DynamicEngine

    return DynamicEngine(spec, dist, config, schedule)


class Trainer:
    def __init__(self, run_dir: Path):
        from ..rundir import RunDir
        from ..spec import load_frozen
        from .control import StopFlag
        from .dist_env import DistEnv

        self.run = RunDir(Path(run_dir).resolve())
        self.dist = DistEnv.from_environ()
        setup_logging(self.dist.rank)
        self.stop = StopFlag().install()
        self._load_frozen = load_frozen
        self.spec = None
        self.step: Optional[int] = None

    # ------------------------------------------------------------------
    def main(self) -> int:
        from . import control
        from .checkpoint import CheckpointError
        from .data import DataSetupError
        from .model import ModelSetupError

        control.write_pid(self.dist.rank)
        try:
            try:
                self.spec = self._load_frozen(self.run.spec)
            except FileNotFoundError:
                raise ModelSetupError(f"{self.run.spec} not found: --run-dir must be a run directory with a frozen spec") from None
            return self._train()
        except NonFiniteLoss as exc:
            log.error("%s", exc)
            control.write_exit(self.dist.rank, "failed", self.step, error=str(exc), kind="nonfinite")
            return EXIT_NONFINITE
        except (CheckpointError, ModelSetupError, DataSetupError) as exc:
            log.error("%s", exc)
            control.write_exit(self.dist.rank, "failed", self.step, error=str(exc), kind="setup")
            return EXIT_SETUP
        except Exception as exc:  # noqa: BLE001 - report every crash in the exit file
            log.error("training failed:\n%s", traceback.format_exc())
            control.write_exit(self.dist.rank, "failed", self.step, error=f"{type(exc).__name__}: {exc}", kind="crash")
            return EXIT_ERROR

    # ------------------------------------------------------------------
    def _train(self) -> int:
        import numpy as np  # noqa: F401 - numpy before paddle (paddle 2.6 import-order bug)

        from . import control
        from .checkpoint import (CheckpointManager, CheckpointError, IncompatibleCheckpoint, build_trainer_state, capture_rng,
                                 find_latest, restore_rng, verify_checkpoint)
        from .data import close_stream, eval_micro_batches, open_datasets, train_stream
        from .engine_common import paddle_seed_scheme
        from .metrics import Metrics
        from .model import check_run_vocab, model_config, starting_weights
        from .schedule import LRSchedule

        spec, dist, run = self.spec, self.dist, self.run
        t = spec.train
        t_start = time.time()
        log.info("trainer rank %d/%d (local %d) pid %d: engine %s, device %s, gbs %d = micro %d x accumulate %d x dp %d",
                 dist.rank, dist.world_size, dist.local_rank, os.getpid(), t.resolved_engine, t.device,
                 spec.global_batch_size, t.micro_batch_size, spec.accumulate_steps, dist.world_size)
        if dist.world_size != spec.resources.world_size and os.environ.get("PADDLE_TRAINERS_NUM"):
            log.warning("launcher world size %d differs from the spec's %d", dist.world_size, spec.resources.world_size)
        if spec.global_batch_size != t.micro_batch_size * spec.accumulate_steps * dist.world_size:
            raise CheckpointError(
                f"global batch {spec.global_batch_size} != micro {t.micro_batch_size} x accumulate "
                f"{spec.accumulate_steps} x world {dist.world_size}: the launcher started a different number of "
                "trainers than the spec describes")

        config = model_config(spec)
        schedule = LRSchedule.from_spec(spec)
        datasets = open_datasets(spec, run.data_cache, is_builder=dist.rank == 0)
        vocab = check_run_vocab(spec)  # the corpus's recorded vocab must be the run's (and the model's)
        if dist.rank == 0:
            log.info("%s", vocab.summary())
        # A re-tokenized or edited corpus under the same prefix would silently shift the data position.
        corpus = datasets["train"].indexed
        compat_key = dict(spec.compat_key(), corpus={"documents": corpus.n_docs, "tokens": corpus.n_tokens})
        engine = create_engine(spec, dist, config, schedule)
        collective = engine.collective
        manager = CheckpointManager(run.checkpoints, dist.rank, dist.world_size, t.keep_checkpoints, collective,
                                    sharded_optimizer=engine.name == "static" and t.sharding_degree > 1)

        # ---- resume: rank 0 chooses, everyone agrees --------------------------
        choice = NOT_RANK0
        refusal: Optional[Exception] = None
        chosen = None
        if dist.rank == 0:
            try:
                chosen = find_latest(run.checkpoints, compat_key)
                choice = chosen.step if chosen is not None else NO_CHECKPOINT
            except IncompatibleCheckpoint as exc:
                refusal, choice = exc, REFUSED
        choice = collective.max_int(choice)
        if choice == REFUSED:
            raise refusal if refusal is not None else CheckpointError(
                "rank 0 refused the newest checkpoint (incompatible spec); see its log")
        step = 0
        resumed_from = None
        starting: Optional[Dict[str, Any]] = None  # what step 0 started from (trainer_state "starting_weights")
        start_report = None
        if choice >= 0:
            from .checkpoint import step_dir_name

            path = run.checkpoints / step_dir_name(choice)
            if chosen is not None:  # rank 0 verified it fully a moment ago
                info = chosen
            else:  # the other ranks check that they see the same complete files (shared file system)
                ok, reason, info = verify_checkpoint(path, full=False)
                if not ok or info is None:
                    raise CheckpointError(f"checkpoint {path} chosen by rank 0 does not verify on rank {dist.rank}: "
                                          f"{reason} (is {run.checkpoints} on a file system all nodes share?)")
            loaded = manager.load(info)
            engine.set_model_state(loaded.model_state)
            engine.set_optimizer_state(loaded.optimizer)
            if loaded.rng is not None:
                restore_rng(loaded.rng)
            step = int(loaded.trainer_state["step"])
            resumed_from = str(path)
            st = loaded.trainer_state
            if st.get("engine") != engine.name:
                log.info("resuming a %s-engine checkpoint in the %s engine", st.get("engine"), engine.name)
            if st.get("spec_sha256") != spec.sha256():
                log.info("the spec changed since the checkpoint (compatible fields only)")
            log.info("resumed from %s: step %d, consumed samples %d", path, step, st.get("consumed_samples", -1))
            starting = st.get("starting_weights")
            if dist.rank == 0 and isinstance(starting, dict):
                log.info("this run started from %s", _describe_start(starting))
        else:
            import random

            random.seed(t.seed + dist.rank)
            np.random.seed((t.seed + dist.rank) % (2 ** 32))
            started = starting_weights(spec, engine.param_shapes(), fresh=engine.model_state)
            if started is None:
                starting = {"random_init": True, "architecture": spec.model.model_name_or_path}
                log.info("random initialisation (model.random_init: true): architecture of %s, seed %d; no weights "
                         "are read", spec.model.model_name_or_path, t.seed)
            else:
                weights, start_report = started
                engine.set_model_state(weights, strict=True)
                del weights
                _verify_loaded(engine, start_report)
                starting = start_report.as_dict()
                log.info("initialised weights from %s: %s", spec.model.model_name_or_path, start_report.summary())
                for note in start_report.notes:
                    log.info("starting weights: %s", note)
                if start_report.fresh_heads:
                    log.warning("starting weights: %d pretraining head tensor(s) are not in %s and start from a fresh "
                                "initialisation (model.allow_missing_heads): %s", len(start_report.fresh_heads),
                                start_report.path, ", ".join(start_report.fresh_heads))
        self.step = step

        metrics = Metrics(rank=dist.rank, visualdl_dir=run.visualdl, global_batch_size=spec.global_batch_size,
                          seq_len=t.max_seq_len, max_steps=t.max_steps, logging_freq=t.logging_freq, use_amp=t.use_amp)
        # What produced these curves, beside them in VisualDL (per attempt: a resume may change max_steps).
        metrics.text("config/spec", spec.to_yaml(), step)
        if not resumed_from:
            metrics.text("init/starting_weights", start_report.text() if start_report is not None
                         else _describe_start(starting or {}), 0)
        last_saved = step if resumed_from else None
        last_snapshot = None
        nonfinite_run = 0
        nonfinite_limit = 20 if t.use_amp else 0
        signal_name = None

        def trainer_state(at: int) -> Dict[str, Any]:
            return build_trainer_state(
                step=at, global_batch_size=spec.global_batch_size, lr_schedule=schedule.state(at),
                spec_sha256=spec.sha256(), compat_key=compat_key, engine=engine.name, world_size=dist.world_size,
                dp_degree=spec.dp_degree, accumulate_steps=spec.accumulate_steps, model_config=config,
                max_steps=t.max_steps, starting_weights=starting)

        def save(at: int) -> None:
            nonlocal last_saved
            if last_saved == at:
                return
            t0 = time.time()
            manager.save(at, model_state=engine.model_state, optimizer_state=engine.optimizer_state,
                         trainer_state=trainer_state(at), rng_state=capture_rng(dist.rank, paddle_seed_scheme(t.seed, dist.rank)))
            last_saved = at
            metrics.exclude(time.time() - t0)

        def snapshot(at: int) -> None:
            nonlocal last_snapshot
            if last_snapshot == at or dist.rank != 0:
                return
            t0 = time.time()
            write_snapshot(spec, config, run.snapshots / f"model_{at}", engine.model_state())
            last_snapshot = at
            log.info("snapshot %s written", run.snapshots / f"model_{at}")
            metrics.exclude(time.time() - t0)

        def evaluate(split: str, at: int, index: int, n: int) -> None:
            ds = datasets.get(split) if isinstance(datasets, dict) else None
            if n <= 0 or ds is None or len(ds) == 0:
                return
            t0 = time.time()
            mbs = eval_micro_batches(spec, ds, dist, index, n)
            res = [engine.eval_batch(mb) for mb in mbs]
            # Every rank evaluates its own share; the logged figure is the mean over all ranks' micro-batches.
            local = [sum(r.loss for r in res), sum(r.lm_loss for r in res), sum(r.sop_loss for r in res), len(res)]
            total = collective.sum_floats(local)
            n_total = max(1.0, total[3])
            loss, lm, sop = total[0] / n_total, total[1] / n_total, total[2] / n_total
            metrics.eval_record(split, at, loss=loss, local_loss=local[0] / max(1, len(res)), micro_batches=len(res))
            if dist.rank == 0:
                dt = time.time() - t0
                samples = int(total[3]) * t.micro_batch_size
                log.info("%s at step %d | loss %.6f | lm_loss %.6f | sop_loss %.6f | %d micro-batches | %.1f samples/s",
                         split, at, loss, lm, sop, int(total[3]), samples / max(dt, 1e-9))
                metrics.scalars(split, at, {"loss": loss, "lm_loss": lm, "sop_loss": sop,
                                            "samples_per_s": samples / max(dt, 1e-9)})
            metrics.exclude(time.time() - t0)

        stop_at = os.environ.get(STOP_AT_ENV)
        stop_at_step = int(stop_at) if stop_at else None
        crash_step, _, crash_marker = os.environ.get(CRASH_ONCE_ENV, "").partition(":")
        log.info("start-up took %.1fs; training steps %d -> %d", time.time() - t_start, step, t.max_steps)
        if start_report is not None and t.eval_iters > 0:
            # where DAPT starts: the loaded model's loss on this corpus's validation split, before any step
            evaluate("valid", 0, 0, t.eval_iters * spec.accumulate_steps)
        stream = train_stream(spec, datasets["train"], dist, step) if step < t.max_steps else None
        try:
            code = collective.max_int(CODE_STOP if self.stop else CODE_CONTINUE)
            control.write_ready(dist.rank)  # every rank answered: the rendezvous worked
            while True:
                if code == CODE_FAIL:
                    raise NonFiniteLoss(f"non-finite loss at step {step} (on at least one rank); "
                                        f"the last good checkpoint is {last_saved if last_saved is not None else 'none'}")
                if code == CODE_STOP:
                    signal_name = self.stop.signal_name or "peer"
                    log.info("stop requested (%s): checkpoint at step %d, then exit", signal_name, step)
                    if step > 0 and t.checkpoint_on_signal:
                        save(step)
                    control.write_exit(dist.rank, "stopped", step, signal=signal_name if self.stop else "peer",
                                       param_digest=param_digest(engine))
                    return EXIT_OK
                if step >= t.max_steps:
                    break
                got, micro_batches = next(stream)
                if got != step:
                    raise RuntimeError(f"data stream is at step {got}, the trainer at {step}")
                lr = schedule.for_update(step)
                res = engine.train_step(step, micro_batches)
                step += 1
                self.step = step
                if res.finite:
                    nonfinite_run = 0
                else:
                    nonfinite_run += 1
                    log.warning("non-finite loss at step %d (%d in a row)", step, nonfinite_run)
                metrics.step(step, res.loss, res.lm_loss, res.sop_loss, lr, res.loss_scale,
                             data_digest=batch_digest(micro_batches) if metrics.loss_log is not None else None)
                if stop_at_step is not None and step == stop_at_step:
                    self.stop.set("TEST_STOP_AT_STEP")
                if crash_marker and dist.rank == 0 and step == int(crash_step) and not os.path.exists(crash_marker):
                    Path(crash_marker).write_text(f"{step}\n")
                    raise RuntimeError(f"{CRASH_ONCE_ENV}: simulated transient fault after step {step}")
                local = CODE_FAIL if nonfinite_run > nonfinite_limit else (CODE_STOP if self.stop else CODE_CONTINUE)
                code = collective.max_int(local)
                if code != CODE_CONTINUE:
                    continue
                if t.eval_iters > 0 and step % t.eval_freq == 0 and step < t.max_steps:
                    evaluate("valid", step, step // t.eval_freq, t.eval_iters * spec.accumulate_steps)
                if step % t.checkpoint_steps == 0 and step < t.max_steps:
                    save(step)
                if step % t.save_steps == 0 and step < t.max_steps:
                    snapshot(step)
            # ---- completed -----------------------------------------------------
            close_stream(stream)
            stream = None
            save(step)
            snapshot(step)
            if t.eval_iters > 0:
                evaluate("test", step, 0, t.eval_iters * 10 * spec.accumulate_steps)
            collective.barrier()
            control.write_exit(dist.rank, "completed", step, param_digest=param_digest(engine))
            log.info("training completed at step %d", step)
            return EXIT_OK
        finally:
            close_stream(stream)
            metrics.close()


def _verify_loaded(engine, report) -> None:
    """The engine's parameters must be the loaded tensors, bit for bit (the report's checksum; fresh heads aside)."""
    from ..weights import tensor_checksum
    from .model import ModelSetupError

    fresh = set(report.fresh_heads)
    got = tensor_checksum({k: v for k, v in engine.model_state().items() if k not in fresh})
    if got != report.checksum:
        raise ModelSetupError(f"the {engine.name} engine's parameters after loading {report.path} have sha256 "
                              f"{got[:16]}, the loaded tensors {report.checksum[:16]}: the weights did not arrive")


def _describe_start(starting: Dict[str, Any]) -> str:
    if starting.get("random_init"):
        return f"random weights (model.random_init), architecture of {starting.get('architecture')}"
    fresh = starting.get("fresh_heads") or []
    return (f"{starting.get('path')} ({starting.get('layout')}, {starting.get('n_tensors')} tensors, sha256 "
            f"{str(starting.get('checksum'))[:16]}{f', {len(fresh)} fresh head tensors' if fresh else ''})")


def batch_digest(micro_batches) -> str:
    """crc32 of this rank's step input (all micro-batches, all fields): compares data streams across runs."""
    import zlib

    import numpy as np

    crc = 0
    for mb in micro_batches:
        for key in sorted(mb):
            crc = zlib.crc32(np.ascontiguousarray(mb[key]).tobytes(), crc)
    return f"{crc:08x}"


def param_digest(engine) -> str:
    """sha256 over this rank's parameters (structured-name order): data-parallel ranks must agree."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    state = engine.model_state()
    for name in sorted(state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(state[name]).tobytes())
    return h.hexdigest()


def write_snapshot(spec, config: Dict[str, Any], out_dir: Path, model_state) -> Path:
    """A `from_pretrained`-loadable directory: weights, config files, tokenizer files."""
    from .checkpoint import write_model_dir
    from .model import save_tokenizer, write_model_config

    def extras(tmp: Path) -> None:
        write_model_config(config, tmp)
        save_tokenizer(spec, tmp)

    return write_model_dir(out_dir, model_state, extras)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ernie_cluster.train",
                                     description="ERNIE 1.0 pretraining trainer (one process per device)")
    parser.add_argument("--run-dir", required=True, help="run directory holding spec.yaml")
    args = parser.parse_args(argv)
    quiet_paddle_env()
    import numpy  # noqa: F401 - before paddle

    trainer = Trainer(Path(args.run_dir))
    return trainer.main()
