"""Trainer overhead, against a baseline measured side by side in the same run.

Step time of our static engine (`ernie_cluster.train.engine_static.StaticEngine`: Fleet
strategy, structured-name map, per-step LR/seed, 3 fetched losses) vs a bare Paddle static
program of the same model built here (paddlenlp ErnieForPretraining + the same loss, AdamW,
global-norm clip, LR scheduler, `exe.run` with the loss fetched), on the same batch and
executor place, no checkpoint/logging in either. Repeats alternate between the two so load
drift hits both. Goal: ours <= 1.03x the bare program.

    python bench/bench_train.py [--quick] [--json OUT]      (or python -m bench.bench_train)

The checkpoint figures (stall of a periodic checkpoint, durable save, verified load) are in `bench_ckpt`, which
also uses this module's tiny model (`_spec`, `_batch`).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

if __package__ in (None, ""):  # run as a file: make `bench` and `ernie_cluster` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402  (before paddle: paddle 2.6 import-order bug)

from bench.common import make_row, module_main, summarize  # noqa: E402

os.environ.setdefault("GLOG_minloglevel", "2")

VOCAB, HIDDEN, LAYERS, HEADS, INTER = 1000, 128, 2, 2, 512
BATCH, SEQ, PRED = 16, 128, 20


def _spec():
    import yaml

    from ernie_cluster.spec import validate_text

    text = yaml.safe_dump({
        "name": "bench", "output_dir": tempfile.gettempdir(),
        "cluster": {"backend": "local", "time": "01:00:00", "requeue": {"signal_lead_s": 30}},
        "data": {"input_prefix": "/nonexistent/bench", "masking": {"max_predictions_per_seq": PRED}},
        "model": {"model_name_or_path": "ernie-1.0-base-zh", "random_init": True, "vocab_size": VOCAB, "hidden_size": HIDDEN,
                  "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "intermediate_size": INTER,
                  "max_position_embeddings": SEQ, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "train": {"device": "cpu", "engine": "static", "max_seq_len": SEQ, "micro_batch_size": BATCH,
                  "max_steps": 100000, "warmup_rate": 0.01, "max_lr": 1e-4, "min_lr": 1e-5, "grad_clip": 1.0,
                  "weight_decay": 0.01},
    })
    return validate_text(text, "bench", [], check_paths=False)


def _batch(seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    lens = rng.randint(SEQ // 2, SEQ + 1, BATCH)
    ids = rng.randint(5, VOCAB, (BATCH, SEQ)).astype("int64")
    mask = np.zeros((BATCH, 1, 1, SEQ), "float32")
    for i, n in enumerate(lens):
        ids[i, n:] = 0
        mask[i, 0, 0, n:] = -1e4
    pos = np.stack([np.sort(rng.choice(np.arange(1, lens[i]), PRED, replace=False)) + i * SEQ for i in range(BATCH)])
    return {
        "input_ids": ids, "token_type_ids": (np.arange(SEQ)[None, :] > lens[:, None] // 2).astype("int64"),
        "position_ids": np.tile(np.arange(SEQ, dtype="int64"), (BATCH, 1)), "attention_mask": mask,
        "masked_positions": pos.reshape(-1).astype("int64"),
        "masked_lm_labels": rng.randint(5, VOCAB, (BATCH * PRED, 1)).astype("int64"),
        "masked_lm_weights": np.ones(BATCH * PRED, "float32"),
        "next_sentence_labels": rng.randint(0, 2, (BATCH, 1)).astype("int64"),
    }


class BareStatic:
    """The same model and update written directly against paddle.static, in its own scope."""

    def __init__(self, config: Dict[str, Any]):
        import paddle
        import paddle.nn.functional as F
        from paddlenlp.transformers import ErnieConfig, ErnieForPretraining, LinearAnnealingWithWarmupDecay

        paddle.enable_static()
        self.scope = paddle.static.Scope()
        self.main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(self.main, startup):
            x = {
                "input_ids": paddle.static.data("input_ids", [-1, SEQ], "int64"),
                "token_type_ids": paddle.static.data("token_type_ids", [-1, SEQ], "int64"),
                "position_ids": paddle.static.data("position_ids", [-1, SEQ], "int64"),
                "attention_mask": paddle.static.data("attention_mask", [-1, 1, 1, SEQ], "float32"),
                "masked_positions": paddle.static.data("masked_positions", [-1], "int64"),
                "masked_lm_labels": paddle.static.data("masked_lm_labels", [-1, 1], "int64"),
                "masked_lm_weights": paddle.static.data("masked_lm_weights", [-1], "float32"),
                "next_sentence_labels": paddle.static.data("next_sentence_labels", [-1, 1], "int64"),
            }
            model = ErnieForPretraining(ErnieConfig(**config))
            scores, sop_scores = model(x["input_ids"], x["token_type_ids"], x["position_ids"], x["attention_mask"],
                                       x["masked_positions"])
            ce = paddle.reshape(F.cross_entropy(scores, x["masked_lm_labels"], ignore_index=-1, reduction="none"), [-1])
            w = x["masked_lm_weights"]
            lm = paddle.sum(ce * w) / paddle.maximum(paddle.sum(w), paddle.full([], 1.0))
            sop = paddle.mean(F.cross_entropy(sop_scores, x["next_sentence_labels"], reduction="none"))
            self.loss = lm + sop
            decay = [p.name for n, p in model.named_parameters() if not any(nd in n for nd in ("bias", "norm"))]
            self.lr = LinearAnnealingWithWarmupDecay(1e-4, 1e-5, 1000, 100000)
            opt = paddle.optimizer.AdamW(learning_rate=self.lr, weight_decay=0.01,
                                         apply_decay_param_fun=lambda n: n in decay,
                                         grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
            opt.minimize(self.loss)
        self.exe = paddle.static.Executor(paddle.CPUPlace())
        with paddle.static.scope_guard(self.scope):
            self.exe.run(startup)

    def step(self, batch) -> float:
        import paddle

        with paddle.static.scope_guard(self.scope):
            (loss,) = self.exe.run(self.main, feed=batch, fetch_list=[self.loss], use_program_cache=True)
        self.lr.step()
        return float(loss)


def bench_step(quick: bool) -> List[Dict[str, Any]]:
    import paddle

    from ernie_cluster.train.dist_env import DistEnv
    from ernie_cluster.train.engine_static import StaticEngine
    from ernie_cluster.train.model import model_config
    from ernie_cluster.train.schedule import LRSchedule

    spec = _spec()
    config = model_config(spec)
    engine = StaticEngine(spec, DistEnv(0, 1, 0, 1, 0), config, LRSchedule.from_spec(spec))
    bare = BareStatic(config)
    batch = _batch()
    steps, repeats = (8, 5) if quick else (16, 9)
    ours_t, bare_t, pair_ratios = [], [], []
    done = 0
    for _ in range(3):  # warm-up: program caches, allocator
        engine.train_step(done, [batch])
        bare.step(batch)
        done += 1
    for r in range(repeats):
        # Single steps alternate between the two (which goes first alternates too), so load changes
        # on this shared machine hit both; a repeat's figure is the median step time of its block.
        a, b_ = [], []
        for i in range(steps):
            order = (0, 1) if (r + i) % 2 == 0 else (1, 0)
            for which in order:
                t0 = time.perf_counter()
                if which == 0:
                    engine.train_step(done, [batch])
                    done += 1
                else:
                    bare.step(batch)
                (a if which == 0 else b_).append(time.perf_counter() - t0)
        ours_t.append(statistics.median(a))
        bare_t.append(statistics.median(b_))
        pair_ratios += [x / y for x, y in zip(a, b_)]
    paddle.disable_static()
    o, b = summarize(ours_t), summarize(bare_t)
    ratio = o["median"] / b["median"]
    tokens = BATCH * SEQ
    return [
        make_row("train_step_static_s", o["median"], "s", baseline="bare paddle.static program, same model/batch",
                 baseline_value=b["median"], goal="<= 1.03x baseline", goal_met=ratio <= 1.03, runs=o["runs"],
                 spread=o["spread"], baseline_runs=b["runs"], paired_ratio=statistics.median(pair_ratios),
                 note=f"tiny ERNIE (vocab {VOCAB}, hidden {HIDDEN}, {LAYERS} layers), batch {BATCH}x{SEQ}, "
                      f"{steps} alternating steps per repeat; ours {tokens / o['median']:.0f} tokens/s; "
                      f"median of per-pair ratios {statistics.median(pair_ratios):.3f}; on a shared 2-core machine "
                      "single figures move by several percent"),
    ]


def run(quick: bool) -> List[Dict[str, Any]]:
    return bench_step(quick)


if __name__ == "__main__":
    raise SystemExit(module_main(run, name="bench_train"))
