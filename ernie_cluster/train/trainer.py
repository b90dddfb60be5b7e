"""The training program every trainer process runs: `python -m ernie_cluster.train --run-dir RUN`.

Start-up (`Trainer._setup`, `_resume_or_start`): read RUN/spec.yaml, write the pid file, install
the stop-flag handlers, open the datasets, build the engine (static Fleet or dynamic data
parallel), resume from the newest complete compatible checkpoint (rank 0 chooses, all ranks
agree), else start from the model directory's weights (every tensor, verified:
`model.starting_weights`; logged as `initialised weights from <dir>: <summary>`, evaluated on
the validation split at step 0, recorded in VisualDL and in every checkpoint's
trainer_state.json), or from random weights with model.random_init (`start.py`).

Loop (`Trainer._train`): batch -> step -> log -> test hooks -> the ranks agree (one max
all-reduce) on "continue / stop signal / non-finite loss" -> a heartbeat -> evaluation every
`eval_freq`, checkpoint every `checkpoint_steps` (written in the background: `ckpt_async`), snapshot
every `save_steps`. A stop saves a checkpoint at that boundary (synchronously, after any write in
flight) and exits 0 with exit.<rank>.json {"reason": "stopped"}; a non-finite loss exits 4
with {"reason": "failed"}. At max_steps a final checkpoint, a snapshot and the test-split
evaluation, then {"reason": "completed"} and exit 0.

Exit codes: 0 completed or stopped; 3 setup problem (incompatible checkpoint, bad model
config, data); 4 non-finite loss; 1 anything else. Every non-zero exit writes
{"reason": "failed", "error": ...} so the launcher never requeues a hopeless run.

Progress (`heartbeat`, with $ERNIE_CLUSTER_CONTROL_DIR): one heartbeat per step (its wall time and this
rank's own share of it: data and host work) and one per phase (start-up, data, evaluation,
checkpoint, train, done) for the node launcher's hang watchdog; SIGURG writes every thread's Python
stack into stacks.rank<k>.txt beside the worker logs.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

from .digests import batch_digest, param_digest
from .hooks import CRASH_ONCE_ENV, SLOW_RANK_ENV, STOP_AT_ENV, Hooks  # noqa: F401 - the test hooks' variables

log = logging.getLogger("ernie_cluster.train")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_SETUP = 3
EXIT_NONFINITE = 4

# A rank's vote at a step boundary; the ranks act on the maximum.
CODE_CONTINUE = 0
CODE_STOP = 1
CODE_FAIL = 2


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


def create_engine(spec, dist, config, schedule, plan):
    """The engine of `spec`, shaped by the attempt's batch plan (its data-parallel degree and accumulation)."""
    engine = spec.train.resolved_engine
    if engine == "static":
        if spec.train.device == "cpu" and dist.world_size > 1:
            raise RuntimeError("the static engine cannot run several processes on the CPU; use engine: dynamic")
        from .engine_static import StaticEngine

        return StaticEngine(spec, dist, config, schedule, plan)
    from .engine_dynamic import DynamicEngine

    return DynamicEngine(spec, dist, config, schedule, plan)


class Trainer:
    def __init__(self, run_dir: Path):
        from ..rundir import RunDir
        from ..spec import load_frozen
        from .control import StopFlag, control_dir
        from .dist_env import DistEnv
        from .heartbeat import Heartbeat, heartbeat_dir, install_stack_dump, stack_file

        self.run = RunDir(Path(run_dir).resolve())
        self.dist = DistEnv.from_environ()
        setup_logging(self.dist.rank)
        self.stop = StopFlag().install()
        cdir = control_dir()
        if cdir is not None:  # the node's log directory holds the control directory
            install_stack_dump(stack_file(cdir.parent, self.dist.rank))
        self.heartbeat = Heartbeat(heartbeat_dir(cdir) if cdir else None, self.dist.rank)
        self._load_frozen = load_frozen
        self.spec = None
        self.step: Optional[int] = None  # completed steps; None until the start point is known (exit records)

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
        """Start up, then one step per iteration until max_steps, an agreed stop or a failure; the exit code."""
        import numpy as np  # noqa: F401 - numpy before paddle (paddle 2.6 import-order bug)

        from . import control
        from .data import close_stream, train_stream

        t_start = time.time()
        t = self.spec.train
        self._setup()
        self.step = self._resume_or_start()
        self._open_metrics()
        self.hooks = Hooks.from_environ(self.dist.rank)
        log.info("start-up took %.1fs; training steps %d -> %d", time.time() - t_start, self.step, t.max_steps)
        self._evaluate_start()
        self.stream = None
        if self.step < t.max_steps:
            self.stream = train_stream(self.spec, self.datasets["train"], self.dist, self.step,
                                       self.plan.accumulate_steps)
        try:
            code = self._agree()
            control.write_ready(self.dist.rank)  # every rank answered: the rendezvous worked
            self.heartbeat.phase("train")
            while True:
                if code != CODE_CONTINUE:
                    return self._stop_or_fail(code)
                if self.step >= t.max_steps:
                    return self._complete()
                t0 = time.perf_counter()
                micro_batches = self._next_batch()
                lr = self.schedule.for_update(self.step)
                t1 = time.perf_counter()
                res = self.engine.train_step(self.step, micro_batches)
                t2 = time.perf_counter()
                self.step += 1
                self._log_step(res, lr, micro_batches)
                self.hooks.after_step(self.step, self.stop)
                t3 = time.perf_counter()
                code = self._agree(failing=self.nonfinite_run > self.nonfinite_limit)
                # busy: this rank's own work (data, logging); the all-reduces make wall time equal on all ranks
                self.heartbeat.step(self.step, time.perf_counter() - t0, busy_s=(t1 - t0) + (t3 - t2))
                if code == CODE_CONTINUE:  # a stop or a failure skips the periodic work: see the loop's top
                    self._maybe_evaluate()
                    self._maybe_checkpoint()
                    self._maybe_snapshot()
        finally:
            self.saver.close()  # a write in flight ends (a crash too: its state was good) and a failure is logged
            close_stream(self.stream)
            self.metrics.close()

    # -- start-up ---------------------------------------------------------
    def _setup(self) -> None:
        """Check the launcher's world against the spec, open the data, build the engine and checkpoint manager."""
        from .checkpoint import CheckpointManager
        from .data import open_datasets
        from .model import check_run_vocab, model_config
        from .schedule import LRSchedule

        spec, dist, run = self.spec, self.dist, self.run
        self._check_world()
        self.config = model_config(spec)
        self.schedule = LRSchedule.from_spec(spec)
        with self.heartbeat.during("data"):
            self.datasets = open_datasets(spec, run.data_cache, is_builder=dist.rank == 0)
        vocab = check_run_vocab(spec)  # the corpus's recorded vocab must be the run's (and the model's)
        if dist.rank == 0:
            log.info("%s", vocab.summary())
        # A re-tokenized or edited corpus under the same prefix would silently shift the data position.
        corpus = self.datasets["train"].indexed
        self.compat_key = dict(spec.compat_key(), corpus={"documents": corpus.n_docs, "tokens": corpus.n_tokens})
        self.engine = create_engine(spec, dist, self.config, self.schedule, self.plan)
        self.collective = self.engine.collective
        self.manager = CheckpointManager(run.checkpoints, dist.rank, dist.world_size, spec.train.keep_checkpoints,
                                         self.collective)
        from .ckpt_async import CheckpointSaver, estimate_nbytes  # periodic checkpoints in the background

        self.saver = CheckpointSaver(self.manager, spec.train.async_checkpoint, self.collective,
                                     lambda: estimate_nbytes(self.engine))

    def _check_world(self) -> None:
        """This attempt's batch plan: the launcher's world (the nodes Slurm gave, within resources.nodes)."""
        from ..spec import BatchPlanError
        from .checkpoint import CheckpointError

        spec, dist, t = self.spec, self.dist, self.spec.train
        try:
            self.plan = spec.batch_plan(world_size=dist.world_size)
        except BatchPlanError as exc:
            raise CheckpointError(f"{exc}: the launcher started a different number of trainers than the spec "
                                  f"describes") from None
        log.info("trainer rank %d/%d (local %d) pid %d: engine %s, device %s, %s", dist.rank, dist.world_size,
                 dist.local_rank, os.getpid(), t.resolved_engine, t.device, self.plan.describe())

    def _resume_or_start(self) -> int:
        """Resume the checkpoint every rank agreed on, else start from the starting weights; the step to run next."""
        from .start import agree_on_checkpoint, resume, start_fresh

        self.resumed_from: Optional[str] = None
        self.start_report = None  # the starting weights' report (a fresh start from a model directory only)
        info = agree_on_checkpoint(self.run.checkpoints, self.compat_key, self.dist, self.collective)
        if info is not None:
            step, self.starting = resume(info, self.manager, self.engine, self.spec, self.dist.rank, self.plan)
            self.resumed_from = str(info.path)
        else:
            step = 0
            self.starting, self.start_report = start_fresh(self.spec, self.engine, self.dist.rank)
        self.last_saved: Optional[int] = step if self.resumed_from else None
        self.last_snapshot: Optional[int] = None
        self.nonfinite_run = 0
        self.nonfinite_limit = 20 if self.spec.train.use_amp else 0
        return step

    def _open_metrics(self) -> None:
        from .metrics import Metrics
        from .start import describe_start

        spec, t = self.spec, self.spec.train
        self.metrics = Metrics(rank=self.dist.rank, visualdl_dir=self.run.visualdl,
                               global_batch_size=spec.global_batch_size, seq_len=t.max_seq_len,
                               max_steps=t.max_steps, logging_freq=t.logging_freq, use_amp=t.use_amp)
        # What produced these curves, beside them in VisualDL (per attempt: a resume may change max_steps).
        self.metrics.text("config/spec", spec.to_yaml(), self.step)
        # The attempt's shape beside the loss: an elastic run changes it at a resume.
        self.metrics.scalars("attempt", self.step, {"nodes": self.plan.nodes, "dp_degree": self.plan.dp_degree,
                                                    "accumulate_steps": self.plan.accumulate_steps})
        if not self.resumed_from:
            self.metrics.text("init/starting_weights", self.start_report.text() if self.start_report is not None
                              else describe_start(self.starting or {}), 0)

    def _evaluate_start(self) -> None:
        """Where DAPT starts: the loaded model's loss on this corpus's validation split, before any step."""
        if self.start_report is not None and self.spec.train.eval_iters > 0:
            self._evaluate("valid", 0, 0, self.spec.train.eval_iters * self.plan.accumulate_steps)

    # -- the step ---------------------------------------------------------
    def _agree(self, failing: bool = False) -> int:
        """All ranks' vote at a step boundary (one max all-reduce): continue, stop (a signal) or fail."""
        local = CODE_FAIL if failing else (CODE_STOP if self.stop else CODE_CONTINUE)
        return self.collective.max_int(local)

    def _next_batch(self):
        got, micro_batches = next(self.stream)
        if got != self.step:
            raise RuntimeError(f"data stream is at step {got}, the trainer at {self.step}")
        return micro_batches

    def _log_step(self, res, lr: float, micro_batches) -> None:
        """Count non-finite losses in a row (tolerated with AMP's loss scaling only), log the step."""
        if res.finite:
            self.nonfinite_run = 0
        else:
            self.nonfinite_run += 1
            log.warning("non-finite loss at step %d (%d in a row)", self.step, self.nonfinite_run)
        trace = None
        if self.metrics.loss_log is not None:  # tests: what this rank trained on, comparable across degrees
            trace = {"data": batch_digest(micro_batches), "micro": [batch_digest([mb]) for mb in micro_batches],
                     "samples": [i for r in self.stream.samples_for_step(self.step - 1) for i in r]}
        self.metrics.step(self.step, res.loss, res.lm_loss, res.sop_loss, lr, res.loss_scale, trace=trace)

    # -- periodic work ----------------------------------------------------
    def _maybe_evaluate(self) -> None:
        t = self.spec.train
        if t.eval_iters > 0 and self.step % t.eval_freq == 0 and self.step < t.max_steps:
            self._evaluate("valid", self.step, self.step // t.eval_freq, t.eval_iters * self.plan.accumulate_steps)

    def _maybe_checkpoint(self) -> None:
        if self.step % self.spec.train.checkpoint_steps == 0 and self.step < self.spec.train.max_steps:
            self._save(self.step, periodic=True)

    def _maybe_snapshot(self) -> None:
        if self.step % self.spec.train.save_steps == 0 and self.step < self.spec.train.max_steps:
            self._snapshot(self.step)

    def _evaluate(self, split: str, at: int, index: int, n: int) -> None:
        """`n` micro-batches of `split` (the `index`-th evaluation) on every rank; rank 0 logs the mean over all."""
        from .data import eval_micro_batches

        ds = self.datasets.get(split) if isinstance(self.datasets, dict) else None
        if n <= 0 or ds is None or len(ds) == 0:
            return
        t0 = time.time()
        with self.heartbeat.during("evaluation"):
            res = [self.engine.eval_batch(mb) for mb in eval_micro_batches(self.spec, ds, self.dist, index, n)]
            local = [sum(r.loss for r in res), sum(r.lm_loss for r in res), sum(r.sop_loss for r in res), len(res)]
            total = self.collective.sum_floats(local)
        n_total = max(1.0, total[3])
        loss, lm, sop = total[0] / n_total, total[1] / n_total, total[2] / n_total
        self.metrics.eval_record(split, at, loss=loss, local_loss=local[0] / max(1, len(res)), micro_batches=len(res))
        if self.dist.rank == 0:
            dt = time.time() - t0
            samples = int(total[3]) * self.spec.train.micro_batch_size
            log.info("%s at step %d | loss %.6f | lm_loss %.6f | sop_loss %.6f | %d micro-batches | %.1f samples/s",
                     split, at, loss, lm, sop, int(total[3]), samples / max(dt, 1e-9))
            self.metrics.scalars(split, at, {"loss": loss, "lm_loss": lm, "sop_loss": sop,
                                             "samples_per_s": samples / max(dt, 1e-9)})
        self.metrics.exclude(time.time() - t0)

    def _save(self, at: int, periodic: bool = False) -> None:
        """The resumable checkpoint at step `at` (collective; once per step; a periodic one in the background)."""
        from .checkpoint import capture_rng
        from .engine_common import paddle_seed_scheme

        if self.last_saved == at:
            return
        t0 = time.time()
        seed = self.spec.train.seed
        with self.heartbeat.during("checkpoint"):
            self.saver.save(at, periodic=periodic, model_state=self.engine.model_state,
                            optimizer_state=self.engine.optimizer_state, trainer_state=self._trainer_state(at),
                            rng_state=capture_rng(self.dist.rank, paddle_seed_scheme(seed, self.dist.rank)),
                            state_views=self.engine.state_views)  # live views on a CPU, None on a GPU
        self.last_saved = at
        self.metrics.exclude(time.time() - t0)

    def _trainer_state(self, at: int) -> Dict[str, Any]:
        from .checkpoint import build_trainer_state

        spec = self.spec
        return build_trainer_state(
            step=at, global_batch_size=spec.global_batch_size, lr_schedule=self.schedule.state(at),
            spec_sha256=spec.sha256(), compat_key=self.compat_key, engine=self.engine.name,
            world_size=self.dist.world_size, dp_degree=self.plan.dp_degree, nodes=self.plan.nodes,
            accumulate_steps=self.plan.accumulate_steps,
            model_config=self.config, max_steps=spec.train.max_steps, starting_weights=self.starting)

    def _snapshot(self, at: int) -> None:
        """Rank 0 writes a from_pretrained-loadable model directory snapshots/model_<at> (once per step)."""
        if self.last_snapshot == at or self.dist.rank != 0:
            return
        t0 = time.time()
        out = self.run.snapshots / f"model_{at}"
        with self.heartbeat.during("checkpoint"):
            write_snapshot(self.spec, self.config, out, self.engine.model_state())
        self.last_snapshot = at
        log.info("snapshot %s written", out)
        self.metrics.exclude(time.time() - t0)

    # -- the end ----------------------------------------------------------
    def _stop_or_fail(self, code: int) -> int:
        """The ranks agreed to stop (checkpoint at this boundary, exit 0) or that a loss is non-finite (raise)."""
        from . import control

        if code == CODE_FAIL:
            last = self.last_saved if self.last_saved is not None else "none"
            raise NonFiniteLoss(f"non-finite loss at step {self.step} (on at least one rank); "
                                f"the last good checkpoint is {last}")
        signal_name = self.stop.signal_name or "peer"  # "peer": another rank was signalled
        log.info("stop requested (%s): checkpoint at step %d, then exit", signal_name, self.step)
        if self.step > 0 and self.spec.train.checkpoint_on_signal:
            self._save(self.step)
        control.write_exit(self.dist.rank, "stopped", self.step, signal=signal_name,
                           param_digest=param_digest(self.engine), checkpoint_error=self.saver.close())
        return EXIT_OK

    def _complete(self) -> int:
        """max_steps reached: final checkpoint, snapshot and test-split evaluation, then exit 0."""
        from . import control
        from .data import close_stream

        t = self.spec.train
        close_stream(self.stream)
        self.stream = None
        self._save(self.step)
        self._snapshot(self.step)
        if t.eval_iters > 0:
            self._evaluate("test", self.step, 0, t.eval_iters * 10 * self.plan.accumulate_steps)
        self.collective.barrier()
        control.write_exit(self.dist.rank, "completed", self.step, param_digest=param_digest(self.engine))
        log.info("training completed at step %d", self.step)
        return EXIT_OK


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
    try:
        return trainer.main()
    finally:
        hb = trainer.heartbeat
        hb.phase("done")  # gone, not silent: nothing left to watch
        if hb.enabled:
            log.info("heartbeats: %d (%d files written), %.1f us each", hb.calls, hb.writes, hb.cost * 1e6)
