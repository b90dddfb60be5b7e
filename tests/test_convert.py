"""Static checkpoint -> dynamic model directory (`python -m ernie_cluster.convert`).

(e) the converted directory loads in ErnieForPretraining.from_pretrained and
    ErnieModel.from_pretrained and reproduces the static program's outputs; a tampered
    checkpoint (a missing parameter, manifest re-signed) makes the conversion fail loudly
    and leaves a previous good output alone; a damaged checkpoint is never converted.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from test_train_support import PY, REPO, base_env, make_run, run_trainer, tiny_spec, toy_data  # noqa: F401


def convert(run, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "ernie_cluster.convert", "--run-dir", str(run), *args], cwd=REPO,
                          env=base_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_data):
    tmp = tmp_path_factory.mktemp("conv")
    run = make_run(tmp, tiny_spec(tmp, toy_data, max_steps=8, dropout=0.1))
    t = run_trainer(run, "train")
    assert t.proc.returncode == 0, t.output[-3000:]
    r = convert(run)
    assert r.returncode == 0, r.stderr[-4000:]
    return {"run": run, "result": r}


def test_conversion_report_and_files(trained):
    run = trained["run"]
    out = run / "converted"
    for f in ("model_state.pdparams", "config.json", "model_config.json", "vocab.txt", "tokenizer_config.json",
              "special_tokens_map.json", "convert_report.json"):
        assert (out / f).is_file(), f
    report = json.loads((out / "convert_report.json").read_text())
    assert report["passed"] is True and report["checkpoint_step"] == 8
    assert report["max_abs_diff"] <= 1e-4 and report["n_params"] == 48
    assert json.loads(trained["result"].stdout.strip().splitlines()[-1])["passed"] is True


def test_converted_model_loads_and_matches_checkpoint(trained):
    # In a fresh interpreter: paddle/fleet global state left by other in-process tests cannot interfere.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_check_converted_model, str(trained["run"])).result(timeout=300)


def _check_converted_model(run_dir: str):
    from pathlib import Path

    import numpy as np
    import paddle
    from paddlenlp.transformers import ErnieForPretraining, ErnieModel, ErnieTokenizer

    run = Path(run_dir)
    out = run / "converted"
    paddle.disable_static()
    model = ErnieForPretraining.from_pretrained(str(out))
    ckpt = paddle.load(str(run / "checkpoints" / "step_000000008" / "model_state.pdparams"), return_numpy=True)
    sd = model.state_dict()
    assert set(sd) == set(ckpt)
    for k, v in sd.items():
        np.testing.assert_array_equal(v.numpy(), ckpt[k], err_msg=k)
    assert model.config.hidden_size == 64 and model.config.type_vocab_size == 2 and model.config.hidden_act == "relu"
    base = ErnieModel.from_pretrained(str(out))
    np.testing.assert_array_equal(base.embeddings.word_embeddings.weight.numpy(),
                                  ckpt["ernie.embeddings.word_embeddings.weight"])
    snapshot = ErnieForPretraining.from_pretrained(str(run / "snapshots" / "model_8"))  # save_steps snapshot
    for k, v in snapshot.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), ckpt[k], err_msg=k)
    tok = ErnieTokenizer.from_pretrained(str(out))
    ids = tok("研究人员")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    model.eval()
    with paddle.no_grad():
        seq, pooled = base(paddle.to_tensor([ids]))
    assert np.isfinite(seq.numpy()).all()


def _resign_manifest(ckpt):
    from ernie_cluster.train.checkpoint import MANIFEST_FILE, sha256_file

    m = json.loads((ckpt / MANIFEST_FILE).read_text())
    for name in m["files"]:
        m["files"][name] = {"size": (ckpt / name).stat().st_size, "sha256": sha256_file(ckpt / name)}
    (ckpt / MANIFEST_FILE).write_text(json.dumps(m))


def test_tampered_checkpoint_fails_loudly_and_keeps_previous_output(trained, tmp_path):
    import paddle

    run = trained["run"]
    bad = tmp_path / "step_000000008"
    shutil.copytree(run / "checkpoints" / "step_000000008", bad)
    state = paddle.load(str(bad / "model_state.pdparams"), return_numpy=True)
    del state["ernie.encoder.layers.1.linear2.weight"]
    state["cls.extra.weight"] = np.zeros(3, "float32")
    paddle.save(state, str(bad / "model_state.pdparams"))
    _resign_manifest(bad)  # the files are "consistent": only the mapping can catch it
    before = (run / "converted" / "model_state.pdparams").read_bytes()
    r = convert(run, "--checkpoint", str(bad), "--no-verify")
    assert r.returncode == 3, r.stderr[-3000:]
    assert "ernie.encoder.layers.1.linear2.weight" in r.stderr and "missing" in r.stderr
    assert "cls.extra.weight" in r.stderr
    assert (run / "converted" / "model_state.pdparams").read_bytes() == before
    assert not list(run.glob(".tmp.converted*"))


def test_shape_mismatch_and_damaged_checkpoint_are_refused(trained, tmp_path):
    import paddle

    run = trained["run"]
    bad = tmp_path / "step_000000008"
    shutil.copytree(run / "checkpoints" / "step_000000008", bad)
    state = paddle.load(str(bad / "model_state.pdparams"), return_numpy=True)
    state["cls.seq_relationship.bias"] = np.zeros(3, "float32")
    paddle.save(state, str(bad / "model_state.pdparams"))
    r = convert(run, "--checkpoint", str(bad), "--no-verify")  # manifest not re-signed: damaged
    assert r.returncode == 3 and "not complete" in r.stderr and "manifest says" in r.stderr, r.stderr[-2000:]
    _resign_manifest(bad)
    r = convert(run, "--checkpoint", str(bad), "--no-verify")
    assert r.returncode == 3 and "shape mismatch" in r.stderr and "cls.seq_relationship.bias" in r.stderr, r.stderr[-2000:]


def test_training_can_start_from_the_converted_directory(trained, tmp_path, toy_data):
    from test_train_support import by_step

    run = trained["run"]
    spec = tiny_spec(tmp_path, toy_data, max_steps=2, checkpoint_steps=100)
    spec["model"].update(model_name_or_path=str(run / "converted"), random_init=False)  # DAPT from it
    new = make_run(tmp_path, spec)
    t = run_trainer(new, "from-converted")
    assert t.proc.returncode == 0, t.output[-3000:]
    assert f"initialised weights from {run / 'converted'}" in t.output
    fresh_spec = tiny_spec(tmp_path / "fresh", toy_data, max_steps=2, checkpoint_steps=100)
    fresh = run_trainer(make_run(tmp_path / "fresh", fresh_spec), "fresh")
    assert fresh.proc.returncode == 0, fresh.output[-3000:]
    warm, cold = by_step(t.losses()), by_step(fresh.losses())
    assert warm[1]["data"] == cold[1]["data"]
    assert warm[1]["loss"] < cold[1]["loss"]  # 8 steps of training show


@pytest.mark.parametrize("first_line", ["from paddlenlp.transformers import ErnieModel",
                                         "import paddle; from paddlenlp.transformers import ErnieModel"])
def test_readme_snippet_loads_in_a_plain_interpreter(trained, first_line):
    # The README's two lines, as a user types them: paddle 2.6 shadows zlib unless the venv loads it first.
    code = f"{first_line}; m = ErnieModel.from_pretrained({str(trained['run'] / 'converted')!r}); print('loaded')"
    r = subprocess.run([PY, "-c", code], cwd="/", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "loaded" in r.stdout, r.stderr[-2000:]
