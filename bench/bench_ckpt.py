"""Checkpoints: what a periodic checkpoint costs the training loop, and the durable save and the verified load,
each against a bare baseline measured side by side in the same run (repeats alternate ours and bare).

Two checkpoints: the tiny static engine's own state (`bench_train`'s model: vocab 1000, hidden 128, 2 layers,
with Adam moments) and one the size and layout of ERNIE 1.0 base's (vocab 18000, hidden 768, 12 layers: the
same tensor names and shapes, random values: 100M parameters, 1.2 GB (1150 MiB) with the two Adam moments; the
issue's "about 1.3 GB" rounds the same up). Training steps are the tiny static engine's in both cases (the
base-sized state is written while the tiny model trains).

The bare baseline handles the same state a checkpoint holds, the plain way (`Case._bare_write`): `paddle.save` of
model and optimizer, the trainer state as JSON, the RNG state pickled, each file fsynced; its load reads the four
back (`paddle.load`, json, pickle) and checks nothing. (Until 2026-11-30 it wrote and read only the model and
optimizer files.)

(a) stall: the time a periodic checkpoint blocks the training loop with `train.async_checkpoint` on
    (`CheckpointSaver.save`: the state copied into host buffers kept from one save to the next, from the engine's
    live views on this CPU, then the write goes to the background thread), against a bare synchronous checkpoint
    of the same state (the engine's own copy, `model_state()`/`optimizer_state()`, then the bare write).
    Goal: <= 0.1x.
(b) loop overhead (informational): the extra time of the training steps that run while the write is in flight,
    over the same number of steps without one, plus the stall: on this 2-core CPU the writer competes with the
    training step for the cores, which a GPU job's host mostly does not.
(c) durable save: `CheckpointManager.save` (temp dir, model and optimizer pickled in parallel and checksummed as
    written, fsync, trainer state, RNG, MANIFEST, rename, model_last; the old checkpoint beyond `keep` is then
    deleted by a thread, waited for outside the timing) in MB/s against the bare write. Goal: >= 0.9x.
(d) verified load: `find_latest(load_rank=0)` (manifest, sizes, every byte checksummed (xxh3-128) while it is
    read, before or while it is unpickled) and the hand-over to `load_checkpoint`, against the bare load.
    Goal: >= 0.8x. Twice: with the files in the page cache for both (written a moment before) and read from disk
    (evicted from the page cache first with fadvise DONTNEED on these files only), as a resume on a node that
    never read them.

This VM's disk is bimodal (a "cold" read of the base-sized files takes 0.55 s or 1.4-2.7 s, ours and bare alike; a
durable save of that size 0.35-2.9 s, the bare one 1.1-2.7 s), so the saves and the loads from disk run
`DISK_REPEATS` pairs, and the notes give the fastest of each too.

    python -m bench.bench_ckpt [--quick] [--json OUT]      (bench/run --only ckpt)

`BENCH_CKPT_BASE_MB` scales the base-sized checkpoint down (the vocab and layer count shrink) where memory or disk
cannot hold it: the state, its copy and two loads need about 4x its size in RAM, five checkpoints 5x on disk.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

if __package__ in (None, ""):  # run as a file: make `bench` and `ernie_cluster` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402  (before paddle: paddle 2.6 import-order bug)

from bench.common import load_avg, make_row, module_main, summarize  # noqa: E402

os.environ.setdefault("GLOG_minloglevel", "2")

DISK_REPEATS = 15  # pairs of durable saves and of loads from disk (the others: 5)


def ernie_base_shapes(vocab: int = 18000, layers: int = 12, hidden: int = 768, inter: int = 3072,
                      positions: int = 513) -> Dict[str, Tuple[int, ...]]:
    """ErnieForPretraining's parameters (paddlenlp names; the tied decoder weight is the word embedding)."""
    shapes: Dict[str, Tuple[int, ...]] = {
        "ernie.embeddings.word_embeddings.weight": (vocab, hidden),
        "ernie.embeddings.position_embeddings.weight": (positions, hidden),
        "ernie.embeddings.token_type_embeddings.weight": (2, hidden),
        "ernie.embeddings.layer_norm.weight": (hidden,), "ernie.embeddings.layer_norm.bias": (hidden,),
    }
    for i in range(layers):
        p = f"ernie.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{proj}.weight"], shapes[p + f"self_attn.{proj}.bias"] = (hidden, hidden), (hidden,)
        shapes[p + "linear1.weight"], shapes[p + "linear1.bias"] = (hidden, inter), (inter,)
        shapes[p + "linear2.weight"], shapes[p + "linear2.bias"] = (inter, hidden), (hidden,)
        for norm in ("norm1", "norm2"):
            shapes[p + f"{norm}.weight"], shapes[p + f"{norm}.bias"] = (hidden,), (hidden,)
    shapes.update({
        "ernie.pooler.dense.weight": (hidden, hidden), "ernie.pooler.dense.bias": (hidden,),
        "cls.predictions.transform.weight": (hidden, hidden), "cls.predictions.transform.bias": (hidden,),
        "cls.predictions.layer_norm.weight": (hidden,), "cls.predictions.layer_norm.bias": (hidden,),
        "cls.predictions.decoder_bias": (vocab,),
        "cls.seq_relationship.weight": (hidden, 2), "cls.seq_relationship.bias": (2,),
    })
    return shapes


def base_sized_state(target_mb: float = 0.0):
    """(model, optimizer) of ERNIE 1.0 base's layout; with `target_mb`, vocab and layers shrunk to about that size."""
    from ernie_cluster.train.checkpoint import empty_optimizer_state, put_accumulator

    vocab, layers = 18000, 12
    if target_mb:
        full = 3 * 4 * sum(int(np.prod(s)) for s in ernie_base_shapes().values()) / 2 ** 20
        scale = min(1.0, target_mb / full)
        vocab, layers = max(1000, int(18000 * scale)), max(1, round(12 * scale))
    rng = np.random.default_rng(0)
    model = {k: rng.standard_normal(s, dtype=np.float32) for k, s in ernie_base_shapes(vocab, layers).items()}
    model["cls.predictions.decoder_weight"] = model["ernie.embeddings.word_embeddings.weight"]  # tied
    opt = empty_optimizer_state()
    for k, v in model.items():
        if k == "cls.predictions.decoder_weight":
            continue
        for kind, value in (("moment1", v * 0.1), ("moment2", np.abs(v) * 0.01),
                            ("beta1_pow_acc", np.full(1, 0.9, "float32")),
                            ("beta2_pow_acc", np.full(1, 0.999, "float32"))):
            put_accumulator(opt, k, kind, value)
    return model, opt


def _copy_state(model: Dict[str, np.ndarray], opt: Dict[str, Any]):
    """What a CPU engine gives: model_state()/optimizer_state() as fresh host arrays (np.array of each tensor), and
    state_views() as the live arrays themselves."""
    def model_state():
        arrays = {id(v): np.array(v) for v in model.values()}
        return {k: arrays[id(v)] for k, v in model.items()}

    def optimizer_state():
        accumulators = {n: {k: np.array(a) for k, a in accs.items()} for n, accs in opt["accumulators"].items()}
        return dict(opt, accumulators=accumulators)

    views = (model, opt)
    return model_state, optimizer_state, lambda: views


class Case:
    """One checkpoint: its state, where it is written, and the training steps that run beside its writes."""

    def __init__(self, label: str, model_state: Callable, optimizer_state: Callable, state_views: Callable,
                 step_fn: Callable, root: Path):
        from ernie_cluster.train import checkpoint as ck
        from ernie_cluster.train.ckpt_async import state_nbytes

        self.label, self.model_state, self.optimizer_state, self.step_fn = label, model_state, optimizer_state, step_fn
        self.state_views = state_views
        self.root = root / label
        self.mb = state_nbytes(model_state(), optimizer_state()) / 2 ** 20
        self.saver = ck.CheckpointSaver(ck.CheckpointManager(self.root / "async", 0, 1, keep=2), "true",
                                        ck.Collective(), lambda: int(self.mb * 2 ** 20))
        self.manager = ck.CheckpointManager(self.root / "sync", 0, 1, keep=2)
        self.rng = ck.capture_rng(0, {})
        self.step = 0

    def args(self, step: int) -> Dict[str, Any]:
        return dict(model_state=self.model_state, optimizer_state=self.optimizer_state,
                    trainer_state={"step": step, "compat_key": {}}, rng_state=self.rng)

    # -- (a) and (b) -----------------------------------------------------------
    def periodic_async(self) -> Dict[str, float]:
        """The stall of one periodic checkpoint, then training steps while it is written, then as many without."""
        self.step += 1
        t0 = time.perf_counter()
        self.saver.save(self.step, periodic=True, state_views=self.state_views, **self.args(self.step))
        stall = time.perf_counter() - t0
        during = []
        while self.saver.writer.in_flight or not during:
            t = time.perf_counter()
            self.step_fn()
            during.append(time.perf_counter() - t)
        failure = self.saver.close()
        if failure:
            raise RuntimeError(failure)
        written = self.saver.writer.seconds
        alone = []
        for _ in during:
            t = time.perf_counter()
            self.step_fn()
            alone.append(time.perf_counter() - t)
        return {"stall": stall, "overhead": stall + sum(during) - sum(alone), "steps": len(during),
                "written": written}

    def _bare_write(self, model: Dict[str, Any], opt: Dict[str, Any]) -> None:
        """The same four pieces a checkpoint holds, the plain way: paddle.save of model and optimizer, the trainer
        state as JSON, the RNG state pickled; each file fsynced. No temporary directory, manifest or checksum."""
        import json
        import pickle

        import paddle

        from ernie_cluster.durable import fsync_file

        raw = self.root / "bare"
        raw.mkdir(parents=True, exist_ok=True)
        paddle.save(model, str(raw / "m.pdparams"))
        paddle.save(opt, str(raw / "o.pdopt"))
        (raw / "trainer_state.json").write_text(json.dumps(self.args(self.step)["trainer_state"]))
        (raw / "rng.pkl").write_bytes(pickle.dumps(self.rng))
        for name in ("m.pdparams", "o.pdopt", "trainer_state.json", "rng.pkl"):
            fsync_file(raw / name)

    def bare_sync(self) -> float:
        """A bare synchronous checkpoint of the same state: the engine's own copy, then `_bare_write`."""
        t0 = time.perf_counter()
        self._bare_write(self.model_state(), self.optimizer_state())
        return time.perf_counter() - t0

    # -- (c) and (d) -----------------------------------------------------------
    def durable_save(self) -> float:
        model, opt = self.model_state(), self.optimizer_state()  # materialised outside the timing, as for bare
        self.step += 1
        t0 = time.perf_counter()
        self.manager.save(self.step, **dict(self.args(self.step), model_state=lambda: model,
                                            optimizer_state=lambda: opt))
        took = time.perf_counter() - t0
        self.manager.wait_pruned()  # the old checkpoint's deletion (a thread) never overlaps a bare save's timing
        return took

    def bare_save(self) -> float:
        model, opt = self.model_state(), self.optimizer_state()  # materialised outside the timing, as for ours
        t0 = time.perf_counter()
        self._bare_write(model, opt)
        return time.perf_counter() - t0

    def verified_load(self, cold: bool = False) -> float:
        from ernie_cluster.train import checkpoint as ck

        if cold:
            _evict(self.root / "sync")
        t0 = time.perf_counter()
        info = ck.find_latest(self.root / "sync", {}, load_rank=0)
        loaded = ck.load_checkpoint(info, 0)
        took = time.perf_counter() - t0
        assert loaded.model_state and loaded.optimizer["accumulators"]
        return took

    def bare_load(self, cold: bool = False) -> float:
        import json
        import pickle

        import paddle

        raw = self.root / "bare"
        if cold:
            _evict(raw)
        t0 = time.perf_counter()
        paddle.load(str(raw / "m.pdparams"), return_numpy=True)
        paddle.load(str(raw / "o.pdopt"), return_numpy=True)
        json.loads((raw / "trainer_state.json").read_text())
        pickle.loads((raw / "rng.pkl").read_bytes())
        return time.perf_counter() - t0


def _evict(directory: Path) -> None:
    """Drop these files' pages from the page cache (theirs only: fadvise DONTNEED), as on a node that never read
    them."""
    for f in directory.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def checksum_mb_s() -> float:
    """This machine's xxh3-128 speed on one core (MB/s): what checking every byte costs at least."""
    import xxhash

    block = np.random.default_rng(1).bytes(64 << 20)
    xxhash.xxh3_128(block[:1 << 20]).digest()
    t0 = time.perf_counter()
    xxhash.xxh3_128(block).digest()
    return 64 / (time.perf_counter() - t0)


def _tiny_engine():
    from bench.bench_train import _batch, _spec
    from ernie_cluster.train.dist_env import DistEnv
    from ernie_cluster.train.engine_static import StaticEngine
    from ernie_cluster.train.model import model_config
    from ernie_cluster.train.schedule import LRSchedule

    spec = _spec()
    engine = StaticEngine(spec, DistEnv(0, 1, 0, 1, 0), model_config(spec), LRSchedule.from_spec(spec))
    batch = _batch()
    done = [0]

    def step() -> None:
        engine.train_step(done[0], [batch])
        done[0] += 1

    for _ in range(3):  # warm-up: program caches, allocator
        step()
    return engine, step


def measure_case(case: Case, repeats: int, disk_repeats: int) -> Dict[str, List[float]]:
    out: Dict[str, List[float]] = {k: [] for k in ("stall", "overhead", "steps", "written", "bare_sync", "save",
                                                   "bare_save", "load", "bare_load", "load_cold", "bare_load_cold")}
    case.periodic_async()  # warm-up of both paths (first-touch page faults, thread start-up)
    case.bare_sync()
    pairs = [("async", lambda: case.periodic_async(), "bare_sync", case.bare_sync),
             ("save", case.durable_save, "bare_save", case.bare_save),
             ("load", case.verified_load, "bare_load", case.bare_load),
             ("load_cold", lambda: case.verified_load(cold=True), "bare_load_cold", lambda: case.bare_load(cold=True))]
    for r in range(repeats):
        # which of the pair goes first alternates, so load drift on this shared machine hits both
        for ours_name, ours, bare_name, bare in pairs:
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                if which == 1:
                    out[bare_name].append(bare())
                elif ours_name == "async":
                    res = ours()
                    for k in ("stall", "overhead", "steps", "written"):
                        out[k].append(res[k])
                else:
                    out[ours_name].append(ours())
    for r in range(repeats, disk_repeats):  # more pairs where the disk's noise is larger than the difference
        for ours_name, ours, bare_name, bare in pairs[1::2]:  # save, load_cold
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                out[bare_name if which else ours_name].append(bare() if which else ours())
    return out


_IO_ROWS = (
    ("save", 0.9, "bare save of the same state (paddle.save of model and optimizer, JSON trainer state, pickled RNG; "
     "each fsynced)",
     "ours: checksummed while written, model and optimizer in parallel, fsync, trainer state, RNG, MANIFEST, "
     "rename, model_last; the checkpoint beyond keep is then deleted by a thread (waited for outside the timing)"),
    ("load", 0.8, "bare load of the same state (paddle.load, json, pickle; no verification)",
     "files in the page cache (written a moment before); ours: manifest, trainer state and RNG too, every byte "
     "checksummed and checked against the manifest"),
    ("load_cold", 0.8, "bare load of the same state (paddle.load, json, pickle; no verification), read from disk",
     "both evicted from the page cache first (fadvise DONTNEED on these files only), as on a node that never read "
     "them; ours: manifest, trainer state and RNG too, every byte checksummed and checked against the manifest"),
)


def rows_for(case: Case, m: Dict[str, List[float]], note: str, xxh_mb_s: float) -> List[Dict[str, Any]]:
    med = {k: summarize(v)["median"] for k, v in m.items() if v}
    size = f"{case.mb:.0f} MB" if case.mb >= 10 else f"{case.mb:.1f} MB"
    rows = [
        make_row(f"checkpoint_stall_{case.label}", med["stall"], "s",
                 baseline="bare synchronous checkpoint of the same state (copy + paddle.save/json/pickle + fsync)",
                 baseline_value=med["bare_sync"], goal="<= 0.1x baseline",
                 goal_met=med["stall"] <= 0.1 * med["bare_sync"], runs=m["stall"],
                 spread=summarize(m["stall"])["spread"],
                 note=f"{size}; the training loop is blocked for the host copy only; the write then took "
                      f"{med['written']:.2f} s in the background ({med['steps']:.0f} training step(s) ran "
                      f"meanwhile); {note}"),
        make_row(f"checkpoint_loop_overhead_{case.label}", med["overhead"], "s",
                 baseline="bare synchronous checkpoint of the same state", baseline_value=med["bare_sync"],
                 runs=m["overhead"], spread=summarize(m["overhead"])["spread"],
                 note=f"{size}; informational: stall + the extra time of the {med['steps']:.0f} step(s) that ran "
                      f"during the background write over as many steps without one (the writer and the training "
                      f"step share 2 cores)"),
    ]
    floor = case.mb / xxh_mb_s  # checking every byte costs at least this on one core
    for kind, need, base, what in _IO_ROWS:
        ours = summarize([case.mb / t for t in m[kind]])
        bare = summarize([case.mb / t for t in m[f"bare_{kind}"]])
        extra = "" if kind == "save" else (f"; xxh3-128 runs at {xxh_mb_s:.0f} MB/s per core here: checking every "
                                            f"byte costs at least {floor:.4f} s")
        rows.append(make_row(
            f"checkpoint_{kind}_{case.label}", ours["median"], "MB/s", baseline=base, baseline_value=bare["median"],
            higher_is_better=True, goal=f">= {need}x baseline", goal_met=ours["median"] >= need * bare["median"],
            runs=ours["runs"], spread=ours["spread"],
            note=f"{size}; median {med[kind]:.3f} s, bare {med['bare_' + kind]:.3f} s (fastest {min(m[kind]):.3f} s, "
                 f"bare {min(m['bare_' + kind]):.3f} s; {len(m[kind])} pairs); {what}{extra}"))
    return rows


def run(quick: bool) -> List[Dict[str, Any]]:
    import paddle

    repeats = 3 if quick else 5
    disk_repeats = 3 if quick else DISK_REPEATS
    load_before = load_avg()
    root = Path(tempfile.mkdtemp(prefix="ernie-bench-ckpt-"))
    rows: List[Dict[str, Any]] = []
    try:
        engine, step = _tiny_engine()
        xxh_mb_s = checksum_mb_s()
        target = float(os.environ.get("BENCH_CKPT_BASE_MB") or 0)
        cases = [("tiny", lambda: (engine.model_state, engine.optimizer_state, engine.state_views),
                  "the tiny static engine's own state")]
        scaled = f" scaled to about {target:.0f} MB (BENCH_CKPT_BASE_MB)" if target else ""
        cases.append(("ernie_base", lambda: _copy_state(*base_sized_state(target)),
                      f"ERNIE 1.0 base's layout{scaled}, random values, tiny-model steps beside it"))
        for label, make, note in cases:
            case = Case(label, *make(), step, root)
            rows += rows_for(case, measure_case(case, repeats, disk_repeats), note, xxh_mb_s)
            shutil.rmtree(case.root, ignore_errors=True)
        paddle.disable_static()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for row in rows:
        row["note"] += f"; load average before/after {load_before}/{load_avg()} on {os.cpu_count()} cores"
    return rows


if __name__ == "__main__":
    raise SystemExit(module_main(run, name="bench_ckpt"))
