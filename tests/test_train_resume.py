"""Stop/resume and crash safety of the static engine, with real trainer processes on the CPU.

(a) a real SIGUSR2 mid-run -> checkpoint at the step boundary, exit 0, exit file; the restart
    reproduces every later step's loss bit for bit (dropout 0), and with dropout on (and two
    data workers) the data stream and the losses are identical too (paddle's RNG is re-seeded
    per step from (seed, rank, step));
(b) SIGKILL in the middle of a checkpoint write (test hook ERNIE_CLUSTER_TEST_SLOW_SAVE) ->
    the next start resumes from the previous complete checkpoint; a corrupted checkpoint is
    skipped; an incompatible spec is refused with the differing fields named; a non-finite
    loss ends the run as failed.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

from test_train_support import Trainer, by_step, copy_checkpoints, flip_bit, make_run, read_jsonl, run_trainer, set_spec, stop_and_resume, tiny_spec, toy_data  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, toy_data):
    """One uninterrupted static run of 24 steps (dropout 0): the reference losses."""
    tmp = tmp_path_factory.mktemp("baseline")
    run = make_run(tmp, tiny_spec(tmp, toy_data))
    t = run_trainer(run, "full")
    assert t.proc.returncode == 0, t.output[-4000:]
    return {"run": run, "trainer": t, "losses": by_step(t.losses()), "spec": tiny_spec(tmp, toy_data)}


def test_uninterrupted_run_completes(baseline):
    t = baseline["trainer"]
    rec = t.exit_record()
    assert rec["reason"] == "completed" and rec["step"] == 24
    assert (t.control / "trainer.0.pid").read_text().strip() == str(t.proc.pid)
    losses = baseline["losses"]
    assert sorted(losses) == list(range(1, 25))
    assert all(np.isfinite(r["loss"]) for r in losses.values())
    assert losses[24]["loss"] < losses[1]["loss"]  # it learns something
    run = baseline["run"]
    assert os.readlink(run / "checkpoints" / "model_last") == "step_000000024"
    snap = run / "snapshots" / "model_24"
    for f in ("model_state.pdparams", "model_config.json", "config.json", "vocab.txt", "tokenizer_config.json"):
        assert (snap / f).is_file(), f
    state = json.loads((run / "checkpoints" / "step_000000024" / "trainer_state.json").read_text())
    assert state["consumed_samples"] == 24 * 8 and state["engine"] == "static" and state["lr_schedule"]["step"] == 24
    out = t.output
    assert "step 24/24 | loss" in out and "tokens/s" in out and "ETA" in out
    assert "valid at step 12" in out and "test at step 24" in out
    from visualdl import LogReader

    records = list((run / "visualdl").glob("vdlrecords.*"))
    assert len(records) == 1, records
    reader = LogReader(file_path=str(records[0]))
    tags = set(reader.get_tags()["scalar"])
    assert {"train/loss", "train/lm_loss", "train/sop_loss", "train/learning_rate", "train/samples_per_s",
            "valid/loss", "test/loss"} <= tags
    assert [x.id for x in reader.get_data("scalar", "train/loss")] == [4, 8, 12, 16, 20, 24]
    (spec_text,) = reader.get_data("text", "config/spec")  # the spec that produced these curves
    assert "max_steps: 24" in spec_text.text.encoded_text_string


def test_sigusr2_stop_and_exact_resume(baseline, tmp_path):
    run = make_run(tmp_path, baseline["spec"] | {"output_dir": str(tmp_path / "run")})
    t = Trainer(run, "first")
    t.wait_for(lambda: len(read_jsonl(t.loss_log)) >= 3, what="step 3")
    t.kill(signal.SIGUSR2)
    assert t.wait() == 0, t.output[-3000:]
    rec = t.exit_record()
    assert rec["reason"] == "stopped" and rec["signal"] == "SIGUSR2"
    stopped = rec["step"]
    assert 3 <= stopped < 24, "the signal arrived too late to test a resume"
    assert (run / "checkpoints" / f"step_{stopped:09d}" / "MANIFEST.json").is_file()
    assert os.readlink(run / "checkpoints" / "model_last") == f"step_{stopped:09d}"

    t2 = run_trainer(run, "second")
    assert t2.proc.returncode == 0, t2.output[-3000:]
    assert f"resumed from {run / 'checkpoints' / f'step_{stopped:09d}'}" in t2.output
    first, second, ref = by_step(t.losses()), by_step(t2.losses()), baseline["losses"]
    assert sorted(second) == list(range(stopped + 1, 25))
    for step in range(1, 25):
        got = first[step] if step <= stopped else second[step]
        assert got["loss"] == ref[step]["loss"], f"step {step}: {got['loss']!r} != {ref[step]['loss']!r}"
        assert got["data"] == ref[step]["data"] and got["lr"] == ref[step]["lr"]
    assert t2.exit_record()["param_digest"] == baseline["trainer"].exit_record()["param_digest"]


def test_resume_with_dropout_and_data_workers(baseline, tmp_path, toy_data):
    spec = tiny_spec(tmp_path, toy_data, dropout=0.1, num_workers=2, max_steps=12)
    ref, a, b, r, got = stop_and_resume(tmp_path, spec, 5)
    assert sorted(got) == list(range(1, 13))
    # the data stream is identical...
    assert [got[s]["data"] for s in range(1, 13)] == [r[s]["data"] for s in range(1, 13)]
    # ... and so are the losses: dropout masks come from a per-step seed
    assert [got[s]["loss"] for s in range(1, 13)] == [r[s]["loss"] for s in range(1, 13)]
    # dropout is really on: the losses differ from the dropout-0 baseline
    assert r[1]["loss"] != baseline["losses"][1]["loss"]


def test_sigkill_during_checkpoint_write_falls_back(baseline, tmp_path):
    run = make_run(tmp_path, baseline["spec"] | {"output_dir": str(tmp_path / "run")})
    ckpts = run / "checkpoints"
    t = Trainer(run, "slow", ERNIE_CLUSTER_TEST_SLOW_SAVE="0.7")
    t.wait_for(lambda: (ckpts / "step_000000004" / "MANIFEST.json").exists(), timeout=120, what="checkpoint 4")
    tmp8 = ckpts / ".tmp.step_000000008"
    t.wait_for(lambda: (tmp8 / "model_state.pdparams").exists(), timeout=120, what="save of step 8 in progress")
    t.kill(signal.SIGKILL)
    t.wait()
    assert not (ckpts / "step_000000008").exists()
    assert tmp8.exists()  # the half-written save is there ...
    t2 = run_trainer(run, "after-kill")
    assert t2.proc.returncode == 0, t2.output[-3000:]
    assert f"resumed from {ckpts / 'step_000000004'}" in t2.output  # ... and ignored
    assert not tmp8.exists()
    ref, got = baseline["losses"], by_step(t2.losses())
    assert [got[s]["loss"] for s in range(5, 25)] == [ref[s]["loss"] for s in range(5, 25)]


def test_corrupted_newest_checkpoint_is_skipped(baseline, tmp_path):
    run = make_run(tmp_path, baseline["spec"] | {"output_dir": str(tmp_path / "run")})
    copy_checkpoints(baseline["run"], run, (16, 20))
    flip_bit(run / "checkpoints" / "step_000000020" / "model_state.pdparams", -100)
    t = run_trainer(run, "corrupt")
    assert t.proc.returncode == 0, t.output[-3000:]
    assert "step_000000020 is damaged and skipped" in t.output and "corrupted" in t.output
    assert f"resumed from {run / 'checkpoints' / 'step_000000016'}" in t.output
    ref, got = baseline["losses"], by_step(t.losses())
    assert [got[s]["loss"] for s in range(17, 25)] == [ref[s]["loss"] for s in range(17, 25)]


def test_incompatible_spec_is_refused(baseline, tmp_path):
    run = make_run(tmp_path, baseline["spec"] | {"output_dir": str(tmp_path / "run")})
    copy_checkpoints(baseline["run"], run, (24,))
    set_spec(run, global_batch_size=16, max_steps=30)
    t = run_trainer(run, "incompat")
    assert t.proc.returncode == 3, t.output[-3000:]
    assert "global_batch_size: checkpoint 8, spec 16" in t.output
    assert "new output_dir" in t.output
    rec = t.exit_record()
    assert rec["reason"] == "failed" and "incompatible" in rec["error"] and rec["kind"] == "setup"  # never retried
    assert not read_jsonl(t.loss_log)  # not a single step was trained


def test_non_finite_loss_fails_without_requeue(baseline, tmp_path):
    run = make_run(tmp_path, baseline["spec"] | {"output_dir": str(tmp_path / "run")})
    set_spec(run, max_lr=1e30, min_lr=1e29, warmup_rate=0.0, grad_clip=0.0, max_steps=12)
    t = run_trainer(run, "nan")
    assert t.proc.returncode == 4, t.output[-3000:]
    rec = t.exit_record()
    assert rec["reason"] == "failed" and "non-finite" in rec["error"] and rec["kind"] == "nonfinite"


def test_resume_refuses_a_changed_corpus_under_the_same_prefix(toy_data, tmp_path):
    # Re-tokenizing or editing the corpus in place would silently move the data position of a resume.
    import shutil

    import numpy as np

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for suffix in ("_ids.npy", "_idx.npz"):
        shutil.copy(toy_data["input_prefix"] + suffix, corpus / f"toy{suffix}")
    data = dict(toy_data, input_prefix=str(corpus / "toy"))
    run = make_run(tmp_path, tiny_spec(tmp_path, data, max_steps=4, eval_iters=0))
    first = run_trainer(run, "first")
    assert first.proc.returncode == 0, first.output[-3000:]
    with np.load(corpus / "toy_idx.npz") as z:
        docs, lens, sents = z["docs"][:-1], z["lens"], z["sents"]
    n_sent = int(docs[-1])
    ids = np.load(corpus / "toy_ids.npy")[: int(sents[n_sent])]
    np.save(corpus / "toy_ids.npy", ids)
    np.savez(corpus / "toy_idx.npz", lens=lens[:n_sent], sents=sents[: n_sent + 1], docs=docs)
    set_spec(run, max_steps=8)
    again = run_trainer(run, "again")
    assert again.proc.returncode == 3, again.output[-3000:]
    assert f"corpus.documents: checkpoint {len(docs)}, spec {len(docs) - 1}" in again.output
    assert not read_jsonl(again.loss_log)
