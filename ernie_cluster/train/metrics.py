"""Rank 0's progress output: one log line per `logging_freq`, VisualDL scalars, and the
per-step jsonl loss log (`ERNIE_CLUSTER_LOSS_LOG=path`, evaluations in `path.eval`) tests use to compare
losses bit for bit."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

log = logging.getLogger("ernie_cluster.train")

LOSS_LOG_ENV = "ERNIE_CLUSTER_LOSS_LOG"


def _fmt_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Metrics:
    def __init__(self, *, rank: int, visualdl_dir: Optional[Path], global_batch_size: int, seq_len: int,
                 max_steps: int, logging_freq: int, use_amp: bool):
        self.rank = rank
        self.gbs = global_batch_size
        self.seq_len = seq_len
        self.max_steps = max_steps
        self.logging_freq = logging_freq
        self.use_amp = use_amp
        self.writer = None
        if rank == 0 and visualdl_dir is not None:
            try:
                from visualdl import LogWriter

                visualdl_dir.mkdir(parents=True, exist_ok=True)
                self.writer = LogWriter(logdir=str(visualdl_dir))
            except Exception as exc:  # noqa: BLE001 - logging must never stop training
                log.warning("VisualDL disabled: %s", exc)
        path = os.environ.get(LOSS_LOG_ENV)
        self.loss_log = None
        if path:
            if rank != 0:
                path = f"{path}.rank{rank}"
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.loss_log = open(path, "a", encoding="utf-8")
        self._window_start = time.time()
        self._window_steps = 0
        self._excluded = 0.0  # eval/checkpoint time inside the window

    def exclude(self, seconds: float) -> None:
        self._excluded += seconds

    def step(self, step: int, loss: float, lm: float, sop: float, lr: float, loss_scale: Optional[float],
             trace: Optional[Dict[str, Any]] = None) -> None:
        """`step` = number of completed steps after this update (1-based); `trace`: the loss log's digests of this
        rank's input (all micro-batches, each micro-batch) and its global sample ids."""
        if self.loss_log is not None:
            rec = {"step": step, "loss": loss, "lm_loss": lm, "sop_loss": sop, "lr": lr, **(trace or {"data": None})}
            self.loss_log.write(json.dumps(rec) + "\n")
            self.loss_log.flush()
        self._window_steps += 1
        if self.rank != 0 or step % self.logging_freq:
            return
        elapsed = max(1e-9, time.time() - self._window_start - self._excluded)
        steps_s = self._window_steps / elapsed
        samples_s = steps_s * self.gbs
        tokens_s = samples_s * self.seq_len
        eta = (self.max_steps - step) / steps_s if steps_s > 0 else float("inf")
        scale = f" | loss_scale {loss_scale:.1f}" if loss_scale is not None else ""
        log.info("step %d/%d | loss %.6f | lm_loss %.6f | sop_loss %.6f | lr %.3e%s | %.3f steps/s | "
                 "%.1f samples/s | %.0f tokens/s | ETA %s", step, self.max_steps, loss, lm, sop, lr, scale,
                 steps_s, samples_s, tokens_s, _fmt_eta(eta))
        self.scalars("train", step, {"loss": loss, "lm_loss": lm, "sop_loss": sop, "learning_rate": lr,
                                     "samples_per_s": samples_s, "tokens_per_s": tokens_s,
                                     **({"loss_scale": loss_scale} if loss_scale is not None else {})})
        self._window_start = time.time()
        self._window_steps = 0
        self._excluded = 0.0

    def eval_record(self, split: str, step: int, **values: float) -> None:
        """Evaluation results go beside the loss log, in `<loss log>.eval`, one line per rank and evaluation."""
        if self.loss_log is not None:
            with open(f"{self.loss_log.name}.eval", "a", encoding="utf-8") as f:
                f.write(json.dumps({"split": split, "step": step, "rank": self.rank, **values}) + "\n")

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is None:
            return
        try:
            self.writer.add_text(tag=tag, text_string=text, step=step)
            self.writer.flush()
        except Exception as exc:  # noqa: BLE001
            log.warning("VisualDL write failed: %s", exc)

    def scalars(self, prefix: str, step: int, values: Dict[str, float]) -> None:
        if self.writer is None:
            return
        try:
            for k, v in values.items():
                self.writer.add_scalar(tag=f"{prefix}/{k}", step=step, value=float(v))
            self.writer.flush()
        except Exception as exc:  # noqa: BLE001
            log.warning("VisualDL write failed: %s", exc)

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001
                pass
        if self.loss_log is not None:
            self.loss_log.close()
