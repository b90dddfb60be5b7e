"""In-process tests of one-pass checkpoint I/O (`ckpt_io`), the one-pass verified load, and asynchronous
checkpoints (`ckpt_async`): the background write, its failure reports, the multi-rank protocol without
collectives in the writer, and the host-memory rules. No trainer processes (those are in test_train_async.py)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
import time

import numpy as np
import pytest
import xxhash

from ernie_cluster.train import checkpoint as ck
from ernie_cluster.train import ckpt_async, ckpt_io, ckpt_read
from test_train_support import flip_bit


def _state(step: int, n: int = 3000):
    rng = np.random.RandomState(step)
    model = {"ernie.a.weight": rng.rand(n, 40).astype("float32"), "ernie.a.bias": rng.rand(40).astype("float32")}
    model["cls.tied"] = model["ernie.a.weight"]  # an alias: the same array under two names
    opt = ck.empty_optimizer_state()
    for k in ("ernie.a.weight", "ernie.a.bias"):
        for kind, value in (("moment1", model[k] * 0.5), ("moment2", model[k] * 0.25),
                            ("beta1_pow_acc", np.ones(1, "float32")), ("beta2_pow_acc", np.ones(1, "float32"))):
            ck.put_accumulator(opt, k, kind, value)
    return model, opt


def _args(step: int, rank: int = 0, calls=None):
    model, opt = _state(step)

    def model_state():
        if calls is not None:
            calls.append(threading.current_thread().name)
        out = {k: v.copy() for k, v in model.items() if k != "cls.tied"}  # fresh arrays, as an engine gives
        out["cls.tied"] = out["ernie.a.weight"]
        return out

    return dict(model_state=model_state, optimizer_state=lambda: opt,
                trainer_state={"step": step, "consumed_samples": step * 8, "compat_key": {"gbs": 8}},
                rng_state=ck.capture_rng(rank, {"scheme": "x"}))


# ---------------------------------------------------------------------------
# one pass over the bytes
# ---------------------------------------------------------------------------


@pytest.fixture(params=["whole", "streamed"])
def read_path(request, monkeypatch):
    """read_pickle's two ways: a small file read whole and checked before it is unpickled, a large one streamed."""
    if request.param == "streamed":
        monkeypatch.setattr(ckpt_io, "WHOLE_FILE_BYTES", 0)
    return request.param


def test_checksums_are_xxh3_and_manifests_listing_sha256_still_verify(tmp_path, read_path):
    model, _ = _state(3)
    path = tmp_path / "m.pdparams"
    meta = ckpt_io.write_pickle(path, model)
    data = path.read_bytes()
    assert meta == {"size": len(data), "xxh3_128": xxhash.xxh3_128(data).hexdigest()}
    assert ckpt_io.file_meta(path) == meta and ckpt_io.file_problem(path, meta) == ""
    legacy = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}  # a manifest written before xxh3
    assert ckpt_io.file_problem(path, legacy) == ""
    np.testing.assert_array_equal(ckpt_io.read_pickle(path, legacy)["ernie.a.weight"], model["ernie.a.weight"])
    for bad in (dict(meta, xxh3_128="0" * 32), dict(legacy, sha256="0" * 64)):
        assert "is corrupted" in ckpt_io.file_problem(path, bad)
        with pytest.raises(ckpt_io.DamagedFile, match="corrupted"):
            ckpt_io.read_pickle(path, bad)
    with pytest.raises(ckpt_io.DamagedFile, match="corrupted"):  # a manifest entry without any checksum
        ckpt_io.read_pickle(path, {"size": len(data)})


def test_write_pickle_files_are_what_paddle_load_reads_and_old_files_still_load(tmp_path):
    import paddle

    model, opt = _state(1)
    for name, obj in (("model", model), ("opt", opt)):
        meta = ckpt_io.write_pickle(tmp_path / f"{name}.ours", obj)
        data = (tmp_path / f"{name}.ours").read_bytes()
        assert meta == {"size": len(data), "xxh3_128": xxhash.xxh3_128(data).hexdigest()}  # as written
        assert data[:2] == b"\x80\x05"  # protocol 5: arrays written from their own memory
        want = pickle.dumps(obj, protocol=4)
        assert pickle.dumps(paddle.load(str(tmp_path / f"{name}.ours"), return_numpy=True), protocol=4) == want
        assert pickle.dumps(ckpt_io.read_pickle(tmp_path / f"{name}.ours", meta), protocol=4) == want
        paddle.save(obj, str(tmp_path / f"{name}.paddle"))  # a checkpoint written before this change (protocol 4)
        old = (tmp_path / f"{name}.paddle").read_bytes()
        meta = {"size": len(old), "xxh3_128": xxhash.xxh3_128(old).hexdigest()}
        back = ckpt_io.read_pickle(tmp_path / f"{name}.paddle", meta)
        assert pickle.dumps(back, protocol=4) == want
    back = ckpt_io.read_pickle(tmp_path / "model.ours")
    assert back["cls.tied"] is back["ernie.a.weight"]  # a tied weight stays one array


def test_read_pickle_tells_damage_from_an_intact_unreadable_file(tmp_path, read_path):
    model, _ = _state(2)
    path = tmp_path / "m.pdparams"
    meta = ckpt_io.write_pickle(path, model)
    flip_bit(path, path.stat().st_size // 2)  # inside an array: unpickles fine, the hash catches it
    with pytest.raises(ckpt_io.DamagedFile, match="corrupted"):
        ckpt_io.read_pickle(path, meta)
    with pytest.raises(ckpt_io.DamagedFile, match="bytes"):
        ckpt_io.read_pickle(path, dict(meta, size=meta["size"] + 1))
    evil = tmp_path / "evil.pkl"
    meta = ckpt_io.write_bytes(evil, pickle.dumps({"x": os.getcwd}, protocol=4))  # names posix.getcwd
    with pytest.raises(ck.CheckpointError, match="intact but cannot be read") as exc:
        ckpt_io.read_pickle(evil, meta)
    assert not isinstance(exc.value, ckpt_io.DamagedFile)


def test_resume_load_reads_each_file_once_and_skips_damage(tmp_path, monkeypatch, caplog):
    mgr = ck.CheckpointManager(tmp_path / "c", rank=0, world_size=1, keep=10)
    for step in (2, 4):
        mgr.save(step, **_args(step))
    flip_bit(tmp_path / "c" / "step_000000004" / "optimizer.pdopt", -200, 0x04)

    def no_second_pass(*a, **k):
        raise AssertionError("a file was hashed outside its load")

    monkeypatch.setattr(ckpt_read, "file_problem", no_second_pass)
    with caplog.at_level("WARNING", logger="ernie_cluster.train"):
        info = ck.find_latest(tmp_path / "c", {"gbs": 8}, load_rank=0)
    assert info.step == 2 and "step_000000004 is damaged and skipped" in caplog.text and "corrupted" in caplog.text
    loaded = mgr.load(info)  # the state read while verifying, handed over once
    assert loaded is not None and info.loaded is None and loaded.rank == 0
    np.testing.assert_array_equal(loaded.model_state["ernie.a.weight"], _state(2)[0]["ernie.a.weight"])
    assert loaded.rng["python"] is not None and loaded.trainer_state["consumed_samples"] == 16


def test_a_resume_asks_for_the_small_files_at_once_only_when_they_are_not_in_the_page_cache(tmp_path, monkeypatch):
    mgr = ck.CheckpointManager(tmp_path / "c", rank=0, world_size=1, keep=10)
    mgr.save(2, **_args(2))
    path = tmp_path / "c" / "step_000000002"
    names = ["MANIFEST.json", "trainer_state.json", "rng_rank00000.pkl", "model_state.pdparams", "optimizer.pdopt"]
    assert ckpt_read._in_page_cache(path / "MANIFEST.json")  # written a moment ago
    asked = []
    real_fadvise = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: asked.append(advice))
    ckpt_read.prefetch(path, names)
    assert asked == []
    for _ in range(5):  # as on a node that never read it (a probe may start reading it again: evict, retry)
        fd = os.open(path / "MANIFEST.json", os.O_RDONLY)
        real_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        if not ckpt_read._in_page_cache(path / "MANIFEST.json"):
            break
        time.sleep(0.05)
    else:
        pytest.skip("the manifest's page stayed in the page cache after POSIX_FADV_DONTNEED (tmpfs?)")
    monkeypatch.setattr(ckpt_read, "_in_page_cache", lambda p: False)
    monkeypatch.setattr(ckpt_read, "PREFETCH_BYTES", 10 ** 9)
    ckpt_read.prefetch(path, names)
    assert asked == [os.POSIX_FADV_WILLNEED] * len(names)  # all small: asked for at once
    monkeypatch.setattr(ckpt_read, "PREFETCH_BYTES", 10_000)
    asked.clear()
    ckpt_read.prefetch(path, names)
    assert asked and len(asked) == sum((path / n).stat().st_size <= 10_000 for n in names) < len(names)


def test_resume_load_checks_the_trainer_state_against_the_manifest_too(tmp_path, caplog):
    mgr = ck.CheckpointManager(tmp_path / "c", rank=0, world_size=1, keep=10)
    for step in (2, 4):
        mgr.save(step, **_args(step))
    state = tmp_path / "c" / "step_000000004" / "trainer_state.json"
    text = state.read_text()
    assert '"consumed_samples": 32' in text
    state.write_text(text.replace('"consumed_samples": 32', '"consumed_samples": 33'))  # same size, valid JSON
    with caplog.at_level("WARNING", logger="ernie_cluster.train"):
        info = ck.find_latest(tmp_path / "c", {"gbs": 8}, load_rank=0)
    assert info.step == 2 and "trainer_state.json is corrupted" in caplog.text
    assert info.trainer_state["consumed_samples"] == 16


def test_resume_load_skips_a_damaged_incompatible_checkpoint_and_refuses_an_intact_one(tmp_path):
    mgr = ck.CheckpointManager(tmp_path / "c", rank=0, world_size=1, keep=10)
    mgr.save(2, **_args(2))
    args = _args(4)
    args["trainer_state"]["compat_key"] = {"gbs": 16}
    mgr.save(4, **args)
    with pytest.raises(ck.IncompatibleCheckpoint, match="gbs: checkpoint 16, spec 8"):
        ck.find_latest(tmp_path / "c", {"gbs": 8}, load_rank=0)
    flip_bit(tmp_path / "c" / "step_000000004" / "model_state.pdparams", -100)
    assert ck.find_latest(tmp_path / "c", {"gbs": 8}, load_rank=0).step == 2


# ---------------------------------------------------------------------------
# the background write, one rank
# ---------------------------------------------------------------------------


def _saver(tmp_path, mode="auto", rank=0, world=1, collective=None, estimate=1000):
    mgr = ck.CheckpointManager(tmp_path / "c", rank=rank, world_size=world, keep=10, collective=collective)
    return ckpt_async.CheckpointSaver(mgr, mode, collective or ck.Collective(), lambda: estimate)


def test_periodic_save_returns_with_the_copy_taken_and_the_write_in_flight(tmp_path, monkeypatch):
    release = tmp_path / "release"
    monkeypatch.setenv(ck.HOLD_SAVE_ENV, f"4:{release}")
    saver = _saver(tmp_path)
    calls = []
    t0 = time.monotonic()
    saver.save(4, periodic=True, **_args(4, calls=calls))
    threading.Timer(20, release.touch).start()  # never leave the held thread behind, whatever fails below
    assert time.monotonic() - t0 < 5
    assert calls == [threading.current_thread().name]  # the copy is taken on the training thread
    assert saver.writer.in_flight
    final = tmp_path / "c" / "step_000000004"
    time.sleep(0.3)
    assert not final.exists() and (tmp_path / "c" / ".tmp.step_000000004" / "model_state.pdparams").is_file()
    assert saver.nbytes == ckpt_async.state_nbytes(*_state(4))  # measured: the alias counted once
    release.write_text("go")
    assert saver.close() is None
    assert (final / "MANIFEST.json").is_file()
    loaded = ck.load_checkpoint(ck.find_latest(tmp_path / "c", {"gbs": 8}), 0)
    np.testing.assert_array_equal(loaded.model_state["cls.tied"], _state(4)[0]["ernie.a.weight"])


def test_live_state_is_copied_into_buffers_kept_between_saves(tmp_path, monkeypatch, caplog):
    """With the engine's live views, the copy goes into kept buffers: what is written is the state at the save
    even when training changes the live arrays during the write, memory is checked only while the buffers are
    not there yet, and an alias stays one array."""
    checks = []
    monkeypatch.setattr(ckpt_async, "memory_check", lambda n: checks.append(n) or (True, "ok"))
    release = tmp_path / "release"
    monkeypatch.setenv(ck.HOLD_SAVE_ENV, f"4:{release}")
    saver = _saver(tmp_path, estimate=10 ** 6)
    live = _state(4)
    written = _state(4)  # the same values, not the same arrays
    with caplog.at_level("INFO", logger="ernie_cluster.train"):
        saver.save(4, periodic=True, **_args(4), state_views=lambda: live)
    threading.Timer(20, release.touch).start()  # never leave the held thread behind, whatever fails below
    assert saver.writer.in_flight
    for array in (live[0]["ernie.a.weight"], live[1]["accumulators"]["ernie.a.bias"]["moment1"]):
        array += 1.0  # the next training steps, while the write is held
    release.write_text("go")
    assert saver.wait() is None
    loaded = ck.load_checkpoint(ck.find_latest(tmp_path / "c", {"gbs": 8}), 0)
    _assert_same_tree((loaded.model_state, loaded.optimizer), written)
    assert loaded.model_state["cls.tied"] is loaded.model_state["ernie.a.weight"]
    assert saver.buffers.nbytes == saver.nbytes == ckpt_async.state_nbytes(*live)  # the alias counted once
    assert "keeps 1.4 MB of host buffers" in caplog.text and checks == [10 ** 6, 10 ** 6]  # at start, first copy
    first = saver.buffers.kept
    saver.save(6, periodic=True, **_args(6), state_views=lambda: live)
    assert saver.close() is None and len(checks) == 2  # nothing more to allocate: no check
    second = saver.buffers.kept
    assert second[0]["ernie.a.weight"] is first[0]["ernie.a.weight"] is second[0]["cls.tied"]  # the same buffers
    assert second[1]["accumulators"]["ernie.a.bias"]["moment1"] is first[1]["accumulators"]["ernie.a.bias"]["moment1"]
    loaded = ck.load_checkpoint(ck.find_latest(tmp_path / "c", {"gbs": 8}), 0)
    _assert_same_tree((loaded.model_state, loaded.optimizer), live)


def _assert_same_tree(got, want, where="state"):
    assert type(got) is type(want) or isinstance(want, dict) and isinstance(got, dict), where
    if isinstance(want, dict):
        assert list(got) == list(want), where
        for k in want:
            _assert_same_tree(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, tuple):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same_tree(g, w, f"{where}[{i}]")
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and np.array_equal(got, want), where
    else:
        assert got == want, where


@pytest.mark.parametrize("parallel_bytes", [0, 1 << 40])  # split over two threads, or not
def test_host_buffers_copy_values_keep_aliases_and_never_share_a_buffer_between_two_arrays(monkeypatch,
                                                                                          parallel_bytes):
    monkeypatch.setattr(ckpt_async.HostBuffers, "PARALLEL_BYTES", parallel_bytes)
    buffers = ckpt_async.HostBuffers()
    a, b = np.arange(12.0).reshape(3, 4), np.ones(5, "int32")
    first = buffers.copy({"w": a, "tied": a, "acc": {"b": b, "n": 3, "s": "x"}, "list": [b, None]})
    assert first["w"] is first["tied"] is not a and np.array_equal(first["w"], a)
    assert first["acc"]["b"] is first["list"][0] and first["acc"]["n"] == 3 and first["list"][1] is None
    assert buffers.nbytes == a.nbytes + b.nbytes
    c = a + 100.0  # the alias is gone: "tied" now has its own array, and must not share "w"'s buffer
    second = buffers.copy({"w": a * 2, "tied": c, "acc": {"b": b + 1, "n": 4, "s": "x"}, "list": [b + 1, None]})
    assert second["w"] is first["w"] and second["tied"] is not second["w"]
    assert np.array_equal(second["w"], a * 2) and np.array_equal(second["tied"], c)
    assert np.array_equal(second["acc"]["b"], b + 1) and second["acc"]["n"] == 4
    tree = {"w": a, "acc": {"b": b}}
    first = buffers.copy(tree)
    a += 1  # training changed the same arrays in place; the same tree is handed over again
    again = buffers.copy(tree)
    assert again is first and np.array_equal(again["w"], a) and again["w"] is not a
    third = buffers.copy({"w": np.zeros((2, 2))})  # another shape: a new buffer
    assert third["w"].shape == (2, 2) and buffers.nbytes == 32


def test_a_failed_background_write_is_reported_and_the_next_save_is_synchronous(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(ck.FAIL_SAVE_ENV, "2")
    saver = _saver(tmp_path)
    with caplog.at_level("INFO", logger="ernie_cluster.train"):
        saver.save(2, periodic=True, **_args(2))
        assert saver.writer.ended(timeout=20)
        assert "checkpoint step 2 failed in the background and is not on disk" in caplog.text  # logged at once
        saver.save(4, periodic=True, **_args(4))
        assert not saver.writer.pending  # written synchronously: nothing in flight
    assert "checkpoint step 2: OSError: ERNIE_CLUSTER_TEST_FAIL_SAVE" in saver.failure
    assert "checkpoint step 4 is written synchronously after the failure" in caplog.text
    assert [p.name for _, p in ck.list_step_dirs(tmp_path / "c")] == ["step_000000004"]
    saver.save(6, periodic=True, **_args(6))  # and asynchronous again
    assert saver.writer.pending and saver.close() is None


def test_stop_save_waits_for_the_write_in_flight_then_saves_synchronously(tmp_path, monkeypatch, caplog):
    release = tmp_path / "release"
    monkeypatch.setenv(ck.HOLD_SAVE_ENV, f"4:{release}")
    saver = _saver(tmp_path)
    saver.save(4, periodic=True, **_args(4))
    threading.Timer(0.5, release.write_text, args=("go",)).start()
    with caplog.at_level("INFO", logger="ernie_cluster.train"):
        saver.save(5, periodic=False, **_args(5))
    assert "checkpoint step 5: first waiting for the write of step 4 in flight" in caplog.text
    steps = [s for s, p in ck.list_step_dirs(tmp_path / "c") if (p / "MANIFEST.json").is_file()]
    assert steps == [5, 4] and not saver.writer.pending


# ---------------------------------------------------------------------------
# two ranks: no collective runs in a writer thread
# ---------------------------------------------------------------------------


class _ThreadCollective(ck.Collective):
    """Two ranks as two threads; records the thread of every collective call."""

    def __init__(self, shared):
        self.shared = shared

    def _call(self, value):
        self.shared["threads"].add(threading.current_thread().name)
        t0 = time.monotonic()
        slot = self.shared["values"]
        slot.append(value)
        self.shared["barrier"].wait(timeout=30)
        out = max(slot)
        self.shared["barrier"].wait(timeout=30)
        if threading.current_thread().name == "rank0":
            slot.clear()
        self.shared["barrier"].wait(timeout=30)
        self.shared["longest"] = max(self.shared.get("longest", 0.0), time.monotonic() - t0)
        return out

    def barrier(self):
        self._call(0)

    def max_int(self, value):
        return int(self._call(int(value)))


def _two_ranks(tmp_path, work):
    shared = {"threads": set(), "values": [], "barrier": threading.Barrier(2)}
    errors = {}

    def run(rank):
        try:
            saver = _saver(tmp_path, rank=rank, world=2, collective=_ThreadCollective(shared))
            work(rank, saver)
        except BaseException as exc:  # noqa: BLE001
            errors[rank] = exc
            shared["barrier"].abort()

    threads = [threading.Thread(target=run, args=(r,), name=f"rank{r}") for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return shared, errors


def test_two_rank_async_save_rank0_waits_for_the_peer_file(tmp_path, monkeypatch):
    real_write_rng = ck.CheckpointManager.write_rng

    def slow_peer(self, tmp, rng_state):
        if self.rank == 1:
            time.sleep(0.5)  # rank 0 must wait for this file, not write the manifest without it
        return real_write_rng(self, tmp, rng_state)

    monkeypatch.setattr(ck.CheckpointManager, "write_rng", slow_peer)

    def work(rank, saver):
        saver.save(3, periodic=True, **_args(3, rank=rank))
        assert saver.writer.pending
        assert saver.close() is None

    shared, errors = _two_ranks(tmp_path, work)
    assert not errors, errors
    assert shared["threads"] == {"rank0", "rank1"}  # every collective ran on a rank's own (main) thread
    info = ck.find_latest(tmp_path / "c", {"gbs": 8})
    assert set(info.manifest["files"]) >= {"rng_rank00000.pkl", "rng_rank00001.pkl"}
    assert ck.load_checkpoint(info, 1).rng["rank"] == 1


def test_no_rank_waits_inside_a_collective_for_a_long_write(tmp_path, monkeypatch):
    release = tmp_path / "release"
    monkeypatch.setenv(ck.HOLD_SAVE_ENV, f"3:{release}")
    threading.Timer(2.0, release.write_text, args=("go",)).start()  # rank 0's write of step 3 takes 2 s
    done = {}

    def work(rank, saver):
        saver.save(3, periodic=True, **_args(3, rank=rank))
        saver.save(6, periodic=True, **_args(6, rank=rank))  # both ranks wait here for rank 0's write
        done[rank] = time.monotonic()
        assert saver.close() is None

    shared, errors = _two_ranks(tmp_path, work)
    assert not errors, errors
    assert release.exists() and sorted(done) == [0, 1]
    assert shared["longest"] < 1.0  # polled: many short all-reduces, never one that lasts the write
    assert [s for s, _ in ck.list_step_dirs(tmp_path / "c")] == [6, 3]


def test_two_rank_peer_failure_ends_rank0s_write_at_once(tmp_path, monkeypatch):
    real_write_rng = ck.CheckpointManager.write_rng

    def failing_peer(self, tmp, rng_state):
        if self.rank == 1:
            raise OSError("disk full (simulated)")
        return real_write_rng(self, tmp, rng_state)

    monkeypatch.setattr(ck.CheckpointManager, "write_rng", failing_peer)
    found = {}

    def work(rank, saver):
        saver.save(3, periodic=True, **_args(3, rank=rank))
        t0 = time.monotonic()
        found[rank] = (saver.close(), time.monotonic() - t0)

    _, errors = _two_ranks(tmp_path, work)
    assert not errors, errors
    assert "disk full" in found[1][0]
    assert "rank(s) failed to write their files" in found[0][0] and "disk full" in found[0][0]
    assert found[0][1] < 10  # the marker, not PEER_WAIT_S
    assert not ck.list_step_dirs(tmp_path / "c")


# ---------------------------------------------------------------------------
# host memory and stale files
# ---------------------------------------------------------------------------


def test_memory_rules(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(ckpt_async.MEM_AVAILABLE_ENV, "10")  # MemAvailable: 10 MB, below the 1 GiB margin
    assert ckpt_async.meminfo()["MemAvailable"] == 10 * 2 ** 20
    with pytest.raises(ck.CheckpointError, match="train.async_checkpoint: true, but host memory cannot hold"):
        _saver(tmp_path, mode="true")
    with caplog.at_level("INFO", logger="ernie_cluster.train"):
        saver = _saver(tmp_path, mode="auto")
        saver.save(2, periodic=True, **_args(2))
        assert not saver.writer.pending  # synchronous
        monkeypatch.setenv(ckpt_async.MEM_AVAILABLE_ENV, str(10 ** 6))
        saver.save(4, periodic=True, **_args(4))
        assert saver.writer.pending and saver.close() is None
    assert "periodic checkpoints are written synchronously until it can" in caplog.text
    assert "asynchronous again" in caplog.text
    saver = _saver(tmp_path, mode="false")
    saver.save(6, periodic=True, **_args(6))
    assert not saver.writer.pending


def test_stale_temporary_dirs_go_at_start_and_only_older_ones_during_a_write(tmp_path):
    c = tmp_path / "c"
    for step in (3, 9):
        (c / f".tmp.step_{step:09d}").mkdir(parents=True)
        (c / f".tmp.step_{step:09d}" / "rng_rank00007.pkl").write_bytes(b"stale")
    saver = _saver(tmp_path)
    assert not list(c.glob(".tmp.*"))  # an earlier attempt's files never join a manifest
    (c / ".tmp.step_000000003").mkdir()
    (c / ".tmp.step_000000009").mkdir()
    saver.save(5, periodic=True, **_args(5))
    assert saver.close() is None
    assert sorted(p.name for p in c.glob(".tmp.*")) == [".tmp.step_000000009"]
    manifest = json.loads((c / "step_000000005" / "MANIFEST.json").read_text())
    assert sorted(manifest["files"]) == ["model_state.pdparams", "optimizer.pdopt", "rng_rank00000.pkl",
                                         "trainer_state.json"]
