"""The on-disk checkpoint format has one home (ernie_cluster/train/ckpt_format.py) and
does not drift: a checkpoint written now has exactly the file names, trainer_state.json keys and
optimizer-state layout that the format had when the home was introduced (fixture below, derived
from a real trainer run of the code before the refactor)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train_support import make_run, run_trainer, tiny_spec, toy_data  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]

# Derived from the code before issue #13's refactor (static engine, 1 rank, 4 steps, checkpoint at 4);
# issue #15 added trainer_state's "nodes" (the attempt's node count; readers of older checkpoints derive it).
EXPECTED = {
    "checkpoints_dir": ["model_last", "step_000000004"],
    "model_last": "step_000000004",
    "files": ["MANIFEST.json", "model_state.pdparams", "optimizer.pdopt", "rng_rank00000.pkl", "trainer_state.json"],
    "manifest_keys": ["created", "files", "format", "step", "world_size"],
    "manifest_format": 1,
    "trainer_state_keys": [
        "accumulate_steps", "compat_key", "consumed_samples", "dp_degree", "engine", "format", "global_batch_size",
        "lr_schedule", "max_steps", "model_config", "nodes", "paddle_version", "paddlenlp_version", "saved_at",
        "spec_sha256", "starting_weights", "step", "world_size"],
    "trainer_state_format": 1,
    "optimizer_keys": ["accumulators", "extra", "format", "loss_scaling"],
    "optimizer_format": "ernie_cluster.adamw.v1",
    "accumulator_kinds": ["beta1_pow_acc", "beta2_pow_acc", "moment1", "moment2"],
    "rng_keys": ["numpy", "paddle", "python", "rank"],
}


def inventory(ckpt_dir: Path) -> dict:
    import paddle

    step = sorted(p for p in os.listdir(ckpt_dir) if p.startswith("step_"))[-1]
    d = ckpt_dir / step
    manifest = json.loads((d / "MANIFEST.json").read_text())
    state = json.loads((d / "trainer_state.json").read_text())
    opt = paddle.load(str(d / "optimizer.pdopt"), return_numpy=True)
    import pickle

    with open(d / "rng_rank00000.pkl", "rb") as f:
        rng = pickle.load(f)
    kinds = sorted({k for accs in opt["accumulators"].values() for k in accs})
    return {
        "checkpoints_dir": sorted(os.listdir(ckpt_dir)),
        "model_last": os.readlink(ckpt_dir / "model_last"),
        "files": sorted(os.listdir(d)),
        "manifest_keys": sorted(manifest),
        "manifest_format": manifest["format"],
        "trainer_state_keys": sorted(state),
        "trainer_state_format": state["format"],
        "optimizer_keys": sorted(opt),
        "optimizer_format": opt["format"],
        "accumulator_kinds": kinds,
        "rng_keys": sorted(rng),
    }


def test_written_checkpoint_matches_the_format_fixture(tmp_path, toy_data):
    run = make_run(tmp_path, tiny_spec(tmp_path, toy_data, max_steps=4, checkpoint_steps=4, eval_freq=1000))
    t = run_trainer(run, "fmt")
    assert t.proc.returncode == 0, t.output[-4000:]
    got = inventory(run / "checkpoints")
    assert got == EXPECTED
    # ... and every one of those names comes from the format's home.
    from ernie_cluster.train import checkpoint as ck

    assert sorted([ck.MANIFEST_FILE, ck.MODEL_FILE, ck.OPT_FILE, ck.rng_file(0), ck.STATE_FILE]) == EXPECTED["files"]
    assert ck.LAST_LINK == "model_last" and ck.step_dir_name(4) == "step_000000004"
    assert ck.STEP_RE.match("step_000000004") and not ck.STEP_RE.match(".tmp.step_000000004")
    assert ck.FORMAT_VERSION == EXPECTED["trainer_state_format"] == EXPECTED["manifest_format"]
    assert ck.OPT_FORMAT == EXPECTED["optimizer_format"]
    assert sorted(ck.ACC_KINDS) == EXPECTED["accumulator_kinds"]
    assert sorted(ck.empty_optimizer_state()) == EXPECTED["optimizer_keys"]


def test_build_trainer_state_keys_and_format():
    from ernie_cluster.train import checkpoint as ck

    state = ck.build_trainer_state(
        step=3, global_batch_size=8, lr_schedule={"step": 3}, spec_sha256="x", compat_key={}, engine="static",
        world_size=1, dp_degree=1, nodes=1, accumulate_steps=1, model_config={}, max_steps=4, starting_weights=None)
    assert sorted(state) == EXPECTED["trainer_state_keys"]
    assert state["format"] == ck.FORMAT_VERSION and state["consumed_samples"] == 24


def test_acc_var_name_pattern():
    from ernie_cluster.train.checkpoint import ACC_RE

    m = ACC_RE.match("linear_3.w_0_moment1_0")
    assert m and m.group("param") == "linear_3.w_0" and m.group("kind") == "moment1"
    assert ACC_RE.match("emb_beta2_pow_acc_12").group("kind") == "beta2_pow_acc"
    assert ACC_RE.match("loss_scaling_0") is None


def test_names_module_is_light_and_runs_does_not_import_paddle_or_numpy():
    code = ("import sys, ernie_cluster.runs, ernie_cluster.train.ckpt_format as n; "
            "bad = [m for m in ('paddle', 'numpy', 'ernie_cluster.train.checkpoint') if m in sys.modules]; "
            "print(n.MANIFEST_FILE); assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "MANIFEST.json"
