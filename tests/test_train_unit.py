"""Fast, in-process tests of the trainer's pure parts: LR schedule, checkpoint format and
verification, fall-back, pruning, the model_last link, compat-key refusal, stop flag and
control files."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest

from ernie_cluster.train import checkpoint as ck
from ernie_cluster.train.ckpt_io import file_meta
from ernie_cluster.train import control
from ernie_cluster.train.schedule import LRSchedule, learning_rate


# ---------------------------------------------------------------------------
# schedule
# ---------------------------------------------------------------------------


def test_linear_schedule_matches_reference_formula():
    s = LRSchedule(max_lr=1e-4, min_lr=1e-5, warmup_steps=10.0, decay_steps=110, style="linear")
    assert learning_rate(0, s) == 0.0
    assert learning_rate(5, s) == pytest.approx(5e-5)
    assert learning_rate(10, s) == pytest.approx(1e-4)
    assert learning_rate(60, s) == pytest.approx(1e-5 + 0.5 * (1e-4 - 1e-5))
    assert learning_rate(110, s) == pytest.approx(1e-5)
    assert learning_rate(500, s) == 1e-5  # flat after decay_steps
    # the update after k completed steps uses lr(k + 1): no zero-LR first update
    assert s.for_update(0) == pytest.approx(1e-5)


def test_cosine_and_none_schedules():
    c = LRSchedule(1.0, 0.1, 0.0, 100, "cosine")
    assert learning_rate(0, c) == pytest.approx(1.0)
    assert learning_rate(50, c) == pytest.approx(0.1 + 0.5 * (math.cos(math.pi * 0.5) + 1) * 0.9)
    assert learning_rate(100, c) == pytest.approx(0.1)
    assert learning_rate(1000, c) == 0.1
    n = LRSchedule(1.0, 0.1, 4.0, 100, "none")
    assert learning_rate(2, n) == pytest.approx(0.5)
    assert learning_rate(1000, n) == 1.0


def test_schedule_from_spec(tmp_path):
    from test_train_support import make_run, tiny_spec
    from ernie_cluster.spec import load_frozen
    from helpers_spec import make_fake_data

    data = make_fake_data(tmp_path / "d")
    run = make_run(tmp_path, tiny_spec(tmp_path, data, max_steps=200, warmup_rate=0.05, lr_decay_style="cosine"))
    s = LRSchedule.from_spec(load_frozen(run / "spec.yaml"))
    assert (s.warmup_steps, s.decay_steps, s.style) == (10.0, 200, "cosine")


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------


def _state(step: int):
    rng = np.random.RandomState(step)
    model = {"ernie.a.weight": rng.rand(3, 4).astype("float32"), "ernie.a.bias": rng.rand(4).astype("float32")}
    opt = {"format": ck.OPT_FORMAT, "accumulators": {k: {"moment1": v * 0, "moment2": v * 0,
                                                         "beta1_pow_acc": np.ones(1, "float32"),
                                                         "beta2_pow_acc": np.ones(1, "float32")} for k, v in model.items()},
           "loss_scaling": None, "extra": {}}
    return model, opt


def _save(mgr: ck.CheckpointManager, step: int, compat=None):
    model, opt = _state(step)
    return mgr.save(step, model_state=lambda: model, optimizer_state=lambda: opt,
                    trainer_state={"step": step, "consumed_samples": step * 8, "compat_key": compat or {"gbs": 8}},
                    rng_state=ck.capture_rng(0, {"scheme": "x"}))


def test_checkpoint_layout_manifest_and_link(tmp_path):
    mgr = ck.CheckpointManager(tmp_path / "checkpoints", rank=0, world_size=1, keep=2)
    path = _save(mgr, 5)
    assert path.name == "step_000000005"
    names = sorted(p.name for p in path.iterdir())
    assert names == ["MANIFEST.json", "model_state.pdparams", "optimizer.pdopt", "rng_rank00000.pkl", "trainer_state.json"]
    manifest = json.loads((path / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == set(names) - {"MANIFEST.json"}
    for name, meta in manifest["files"].items():
        assert meta["size"] == (path / name).stat().st_size
        assert meta == file_meta(path / name)  # size and xxh3_128
    link = tmp_path / "checkpoints" / "model_last"
    assert link.is_symlink() and os.readlink(link) == "step_000000005"  # relative
    info = ck.find_latest(tmp_path / "checkpoints", {"gbs": 8})
    loaded = mgr.load(info)
    np.testing.assert_array_equal(loaded.model_state["ernie.a.weight"], _state(5)[0]["ernie.a.weight"])
    assert loaded.trainer_state["consumed_samples"] == 40
    assert loaded.rng["python"] is not None
    assert not list((tmp_path / "checkpoints").glob(".tmp.*"))


def test_keep_prunes_only_after_new_checkpoint_is_complete(tmp_path):
    mgr = ck.CheckpointManager(tmp_path / "c", rank=0, world_size=1, keep=2)
    for step in (1, 2, 3, 4):
        _save(mgr, step)
        assert (tmp_path / "c" / f"step_{step:09d}" / "MANIFEST.json").is_file()  # complete when save returns
    mgr.wait_pruned()  # old ones are deleted by a thread
    assert [p.name for _, p in ck.list_step_dirs(tmp_path / "c")] == ["step_000000004", "step_000000003"]
    assert os.readlink(tmp_path / "c" / "model_last") == "step_000000004"
    (tmp_path / "c" / ".old.step_000000002").mkdir()  # what a deletion cut short by a kill leaves
    _save(mgr, 5)
    mgr.wait_pruned()
    assert [p.name for _, p in ck.list_step_dirs(tmp_path / "c")] == ["step_000000005", "step_000000004"]
    assert not list((tmp_path / "c").glob(".old.*"))


def test_damaged_checkpoints_are_skipped_newest_first(tmp_path, caplog):
    mgr = ck.CheckpointManager(tmp_path / "c", rank=0, world_size=1, keep=10)
    for step in (2, 4, 6, 8):
        _save(mgr, step)
    c = tmp_path / "c"
    # 8: a corrupted byte (same size), 6: a missing file, 4: no manifest (an interrupted save)
    f = c / "step_000000008" / "optimizer.pdopt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    (c / "step_000000006" / "rng_rank00000.pkl").unlink()
    (c / "step_000000004" / "MANIFEST.json").unlink()
    with caplog.at_level("WARNING", logger="ernie_cluster.train"):
        info = ck.find_latest(c, {"gbs": 8})
    assert info.step == 2
    text = caplog.text
    assert "step_000000008" in text and "corrupted" in text
    assert "rng_rank00000.pkl is missing" in text
    assert "no MANIFEST.json" in text


def test_truncated_file_fails_size_check_without_hashing(tmp_path):
    mgr = ck.CheckpointManager(tmp_path / "c", rank=0, world_size=1, keep=10)
    path = _save(mgr, 3)
    with open(path / "model_state.pdparams", "r+b") as f:
        f.truncate(10)
    ok, reason, _ = ck.verify_checkpoint(path, full=False)
    assert not ok and "bytes" in reason


def test_incompatible_checkpoint_is_refused_with_field_names(tmp_path):
    mgr = ck.CheckpointManager(tmp_path / "c", rank=0, world_size=1, keep=10)
    _save(mgr, 3, compat={"global_batch_size": 8, "model": {"hidden_size": 64}, "max_seq_len": 64})
    with pytest.raises(ck.IncompatibleCheckpoint) as exc:
        ck.find_latest(tmp_path / "c", {"global_batch_size": 16, "model": {"hidden_size": 64}, "max_seq_len": 128})
    msg = str(exc.value)
    assert "global_batch_size: checkpoint 8, spec 16" in msg
    assert "max_seq_len: checkpoint 64, spec 128" in msg
    assert "hidden_size" not in msg
    assert "new output_dir" in msg


def test_stale_temp_dir_is_ignored_and_cleaned(tmp_path):
    c = tmp_path / "c"
    mgr = ck.CheckpointManager(c, rank=0, world_size=1, keep=10)
    _save(mgr, 2)
    stale = c / ".tmp.step_000000004"
    stale.mkdir()
    (stale / "model_state.pdparams").write_bytes(b"partial")
    assert ck.find_latest(c, {"gbs": 8}).step == 2
    _save(mgr, 4)
    assert not stale.exists()
    assert ck.find_latest(c, {"gbs": 8}).step == 4


class _ThreadCollective(ck.Collective):
    def __init__(self, barrier):
        self._barrier = barrier

    def barrier(self):
        self._barrier.wait(timeout=30)


def test_two_rank_save_rank0_writes_model_every_rank_its_files(tmp_path):
    import threading

    barrier = threading.Barrier(2)
    model, opt = _state(9)
    keys = sorted(model)
    errors = []

    def worker(rank):
        try:
            mgr = ck.CheckpointManager(tmp_path / "c", rank=rank, world_size=2, keep=2,
                                       collective=_ThreadCollective(barrier))
            if rank == 1:
                model_fn = lambda: (_ for _ in ()).throw(AssertionError("rank 1 must not write the model"))  # noqa: E731
            else:
                model_fn = lambda: model  # noqa: E731
            mgr.save(9, model_state=model_fn, optimizer_state=lambda: opt,
                     trainer_state={"step": 9, "compat_key": {}}, rng_state=ck.capture_rng(rank, {}))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    info = ck.find_latest(tmp_path / "c", {})
    files = set(info.manifest["files"])
    assert files == {"model_state.pdparams", "optimizer.pdopt", "trainer_state.json",
                     "rng_rank00000.pkl", "rng_rank00001.pkl"}
    for rank in (0, 1):
        loaded = ck.CheckpointManager(tmp_path / "c", rank=rank, world_size=2, keep=2).load(info)
        assert loaded.rng["rank"] == rank
        assert sorted(loaded.optimizer["accumulators"]) == keys
        np.testing.assert_array_equal(loaded.model_state[keys[0]], model[keys[0]])


def test_write_model_dir_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "converted"
    ck.write_model_dir(out, {"w": np.ones(2, "float32")}, lambda d: (d / "config.json").write_text("{}"))
    assert (out / "config.json").exists()

    def broken(d):
        (d / "config.json").write_text("{\"new\": 1}")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ck.write_model_dir(out, {"w": np.zeros(2, "float32")}, broken)
    assert (out / "config.json").read_text() == "{}"  # the good previous output is untouched
    assert not list(tmp_path.glob(".tmp.*"))


# ---------------------------------------------------------------------------
# stop flag and control files
# ---------------------------------------------------------------------------


def test_stop_flag_records_signal_without_doing_work(tmp_path, monkeypatch):
    old = {s: signal.getsignal(getattr(signal, s)) for s in control.STOP_SIGNALS}
    try:
        flag = control.StopFlag().install()
        assert not flag
        os.kill(os.getpid(), signal.SIGUSR2)
        assert flag and flag.signal_name == "SIGUSR2"
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.signal_name == "SIGUSR2" and flag.count == 2  # the first signal wins
    finally:
        for s, h in old.items():
            signal.signal(getattr(signal, s), h)


def test_control_files(tmp_path, monkeypatch):
    monkeypatch.setenv(control.CONTROL_DIR_ENV, str(tmp_path / "ctl"))
    control.write_pid(3)
    assert (tmp_path / "ctl" / "trainer.3.pid").read_text().strip() == str(os.getpid())
    control.write_exit(3, "stopped", 17, signal="SIGUSR2")
    rec = json.loads((tmp_path / "ctl" / "exit.3.json").read_text())
    assert (rec["reason"], rec["step"], rec["signal"]) == ("stopped", 17, "SIGUSR2")
    monkeypatch.delenv(control.CONTROL_DIR_ENV)
    control.write_exit(4, "completed", 1)  # no control dir: nothing written, no error
    assert not (tmp_path / "ctl" / "exit.4.json").exists()
