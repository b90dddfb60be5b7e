"""DAPT starts from the model directory's weights, exactly, on both engines; broken directories never get that far.

(1) A tiny ERNIE written by PaddleNLP's own `save_pretrained` (random but fixed weights, not any initialisation
    an engine would draw, and the toy corpus's vocab.txt) is the starting point of a run of the project's
    trainer (static engine, one process; dynamic engine), dropout 0. The trainer evaluates the validation split
    at step 0; that loss must equal `ErnieForPretraining.from_pretrained(DIR)`'s loss on the same micro-batches
    under the project's criterion (`train.model.forward_losses`), computed here in a separate interpreter.
    The log line, the checkpoint's trainer_state.json and VisualDL say what the run started from.
(2) `validate` refuses each broken directory before anything is submitted (exit 2, the field, its YAML line,
    the file): no weights, wrong shapes, a missing tensor, a vocab mismatch, a missing config, overrides the
    weights cannot take, a damaged MANIFEST copy, an ErnieModel-only directory without allow_missing_heads,
    a corpus tokenized with another vocab; and a built-in name without random_init. The trainer refuses a
    directory that broke after validation (exit 3, no step taken).
"""

from __future__ import annotations

import json
import multiprocessing
import pickle
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_train_support import PY, REPO, base_env, make_run, run_trainer, tiny_spec, toy_data  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HIDDEN, LAYERS, HEADS, INTER, MAX_POS = 64, 2, 2, 128, 128  # tiny_spec's architecture
SEED = 20240611  # not the trainer's seed (tiny_spec: 7): the directory's weights are no engine's own init


def _spawn(fn, *args, timeout: float = 300):
    """Run fn in a fresh interpreter: paddle's global state (static mode, fleet) stays out of this process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result(timeout=timeout)


def _write_model_dir(out: str, vocab: str, seed: int, heads: bool = True, ids: str = "") -> str:
    """PaddleNLP's save_pretrained of a tiny ERNIE with random but fixed weights; returns the tensor checksum.

    With `ids` (a corpus's _ids.npy) the MLM decoder bias holds the corpus's log unigram frequencies: a model
    that knows something, whose loss is far below a random model's ln(vocab).
    """
    import numpy as np
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieForPretraining, ErnieModel, ErnieTokenizer

    from ernie_cluster.weights import tensor_checksum

    n = sum(1 for _ in open(vocab, encoding="utf-8"))
    config = ErnieConfig(vocab_size=-(-n // 8) * 8, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, intermediate_size=INTER, max_position_embeddings=MAX_POS,
                         type_vocab_size=2, hidden_act="relu", pad_token_id=0, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    paddle.disable_static()
    paddle.seed(seed)
    model = (ErnieForPretraining if heads else ErnieModel)(config)
    rng = np.random.RandomState(seed)
    seen = set()
    for p in model.parameters():  # each parameter once (tied ones are one Parameter): scaled and shifted
        if id(p) in seen:
            continue
        seen.add(id(p))
        v = p.numpy()
        p.set_value((v * rng.uniform(0.5, 1.5) + rng.normal(0.0, 0.02, v.shape)).astype(v.dtype))
    if heads and ids:
        counts = np.bincount(np.load(ids).astype(np.int64), minlength=config.vocab_size)[: config.vocab_size]
        tokens = Path(vocab).read_text(encoding="utf-8").splitlines()
        index = {t: i for i, t in enumerate(tokens)}
        for i, t in enumerate(tokens):  # whole-word marks: the model predicts the plain character
            if t.startswith("##") and t[2:] in index:
                counts[index[t[2:]]] += counts[i]
                counts[i] = 0
        model.cls.predictions.decoder_bias.set_value(np.log(counts + 1e-3).astype("float32"))
    model.save_pretrained(out)
    ErnieTokenizer(vocab_file=vocab).save_pretrained(out)
    shutil.copyfile(vocab, Path(out) / "vocab.txt")  # verbatim: the line number is the token id
    return tensor_checksum({k: v.numpy() for k, v in model.state_dict().items()})


def _reference_eval(run_dir: str, model_dir: str, n_micro: int, cache: str) -> dict:
    """from_pretrained(DIR) on the trainer's step-0 validation micro-batches, with the project's criterion."""
    from pathlib import Path

    import numpy as np
    import paddle
    from paddlenlp.transformers import ErnieForPretraining

    from ernie_cluster.spec import load_frozen
    from ernie_cluster.train.data import eval_micro_batches, open_datasets
    from ernie_cluster.train.dist_env import DistEnv
    from ernie_cluster.train.model import forward_losses

    spec = load_frozen(Path(run_dir) / "spec.yaml")
    valid = open_datasets(spec, Path(cache), is_builder=True)["valid"]
    batches = eval_micro_batches(spec, valid, DistEnv(0, 1, 0, 1, 0), 0, n_micro)
    paddle.disable_static()
    model = ErnieForPretraining.from_pretrained(model_dir)
    model.eval()
    losses = []
    with paddle.no_grad():
        for mb in batches:
            total, lm, sop, _, _ = forward_losses(model, {k: paddle.to_tensor(v) for k, v in mb.items()},
                                                  bool(spec.data.masking.binary_head))
            losses.append((float(total), float(lm), float(sop)))
    return {"losses": losses, "masked": [int(np.asarray(mb["masked_lm_weights"]).sum()) for mb in batches]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, toy_data):
    d = tmp_path_factory.mktemp("pretrained") / "tiny-ernie"
    checksum = _spawn(_write_model_dir, str(d), toy_data["vocab_file"], SEED, True, f"{toy_data['input_prefix']}_ids.npy")
    for f in ("config.json", "model_state.pdparams", "vocab.txt", "tokenizer_config.json"):
        assert (d / f).is_file(), f
    return {"dir": d, "checksum": checksum}


def dapt_spec(tmp: Path, data, model: Path, *, engine: str = "static", **train):
    spec = tiny_spec(tmp, data, engine=engine, **train)
    spec["data"].pop("vocab_file")  # the model's vocab.txt travels with it
    spec["model"] = {"model_name_or_path": str(model), "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    return spec


# ---------------------------------------------------------------------------
# (1) the weights arrive
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["static", "dynamic"])
def test_dapt_run_starts_exactly_from_the_model_directory(tmp_path, toy_data, model_dir, engine):
    d = model_dir["dir"]
    run = make_run(tmp_path, dapt_spec(tmp_path, toy_data, d, engine=engine, max_steps=2, checkpoint_steps=100,
                                       eval_iters=2, eval_freq=100))
    frozen = yaml.safe_load((run / "spec.yaml").read_text())
    assert frozen["model"]["random_init"] is False and frozen["data"]["vocab_file"] is None
    t = run_trainer(run, f"dapt-{engine}")
    assert t.proc.returncode == 0, t.output[-4000:]
    out = t.output
    line = next((l for l in out.splitlines() if f"initialised weights from {d}: " in l), None)
    assert line is not None, out[-3000:]
    assert f"starting weights {d} (save_pretrained, pdparams, structured names)" in line
    assert f"sha256 {model_dir['checksum'][:16]}" in line and "no fresh heads" in line
    assert "random initialisation" not in out and "resumed from" not in out
    assert f"vocab {d / 'vocab.txt'}" in out  # the run's vocab is the model's

    evals = [json.loads(x) for x in Path(f"{t.loss_log}.eval").read_text().splitlines()]
    first = evals[0]
    assert (first["split"], first["step"], first["micro_batches"]) == ("valid", 0, 2 * 2)  # eval_iters x accumulate
    assert "valid at step 0 | loss" in out

    ref = _spawn(_reference_eval, str(run), str(d), first["micro_batches"], str(tmp_path / "ref_cache"))
    assert min(ref["masked"]) > 0
    expected = float(np.mean([r[0] for r in ref["losses"]]))
    n_vocab = len(Path(toy_data["vocab_file"]).read_text(encoding="utf-8").splitlines())
    assert expected < np.log(n_vocab) + np.log(2) - 1.0  # the directory's model knows the corpus: not a random start
    np.testing.assert_allclose(first["loss"], expected, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(first["local_loss"], expected, rtol=2e-5, atol=2e-5)

    state = json.loads((run / "checkpoints" / "step_000000002" / "trainer_state.json").read_text())
    start = state["starting_weights"]
    assert start["path"] == str(d) and start["layout"] == "save_pretrained" and start["checksum"] == model_dir["checksum"]
    assert start["fresh_heads"] == [] and start["n_tensors"] == 5 + 2 * 16 + 2 + 7  # tied aliases counted once
    from visualdl import LogReader

    (record,) = list((run / "visualdl").glob("vdlrecords.*"))
    (text,) = LogReader(file_path=str(record)).get_data("text", "init/starting_weights")
    assert model_dir["checksum"] in text.text.encoded_text_string


def test_a_resumed_run_keeps_its_start_and_needs_no_starting_weights(tmp_path, toy_data, model_dir):
    """Stopped at step 2, the weights file gone: the resume reads the checkpoint, and still says where step 0 began."""
    d = tmp_path / "model"
    shutil.copytree(model_dir["dir"], d)
    run = make_run(tmp_path, dapt_spec(tmp_path, toy_data, d, max_steps=4, checkpoint_steps=100, eval_iters=0))
    first = run_trainer(run, "first", ERNIE_CLUSTER_TEST_STOP_AT_STEP="2")
    assert first.proc.returncode == 0 and first.exit_record()["reason"] == "stopped", first.output[-3000:]
    (d / "model_state.pdparams").unlink()
    again = run_trainer(run, "again")
    assert again.proc.returncode == 0, again.output[-3000:]
    assert "resumed from" in again.output and "initialised weights from" not in again.output
    assert f"this run started from {d} (save_pretrained, 46 tensors, sha256 {model_dir['checksum'][:16]})" in again.output
    state = json.loads((run / "checkpoints" / "step_000000004" / "trainer_state.json").read_text())
    assert state["starting_weights"]["checksum"] == model_dir["checksum"]


def test_random_init_reads_no_weights_and_says_so(tmp_path, toy_data, model_dir):
    """The same directory with model.random_init: true is only an architecture; the run logs that."""
    spec = dapt_spec(tmp_path, toy_data, model_dir["dir"], max_steps=1, checkpoint_steps=100, eval_iters=0)
    spec["model"]["random_init"] = True
    run = make_run(tmp_path, spec)
    t = run_trainer(run, "scratch")
    assert t.proc.returncode == 0, t.output[-3000:]
    assert "random initialisation (model.random_init: true)" in t.output
    assert "initialised weights from" not in t.output
    state = json.loads((run / "checkpoints" / "step_000000001" / "trainer_state.json").read_text())
    assert state["starting_weights"] == {"random_init": True, "architecture": str(model_dir["dir"])}


def test_trainer_refuses_a_directory_that_broke_after_validation(tmp_path, toy_data, model_dir):
    d = tmp_path / "model"
    shutil.copytree(model_dir["dir"], d)
    run = make_run(tmp_path, dapt_spec(tmp_path, toy_data, d, max_steps=2, checkpoint_steps=100))
    _drop_tensor(d / "model_state.pdparams", "ernie.encoder.layers.1.linear2.weight")
    t = run_trainer(run, "broken")
    assert t.proc.returncode == 3, t.output[-3000:]
    rec = t.exit_record()
    assert rec["reason"] == "failed" and rec["kind"] == "setup"
    assert "ernie.encoder.layers.1.linear2.weight" in rec["error"] and str(d / "model_state.pdparams") in rec["error"]
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").glob("step_*"))


# ---------------------------------------------------------------------------
# (2) validate refuses, before anything is submitted
# ---------------------------------------------------------------------------


def _drop_tensor(pdparams: Path, name: str) -> None:
    """Rewrite a save_pretrained weights file (a pickle of numpy arrays, as paddle.save writes it) without `name`."""
    with open(pdparams, "rb") as f:
        state = pickle.load(f)
    del state[name]
    with open(pdparams, "wb") as f:
        pickle.dump(state, f, protocol=4)


def _validate(tmp: Path, spec: dict, capsys, command: str = "validate"):
    from ernie_cluster.cli import main

    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    code = main([command, str(path)])
    out, err = capsys.readouterr()
    return code, out, err, path


def _line_of(path: Path, key: str) -> int:
    return next(i for i, l in enumerate(path.read_text().splitlines(), 1) if l.strip().startswith(f"{key}:"))


def _broken_copy(src: Path, dst: Path, kind: str, vocab_file: str) -> dict:
    """A copy of the model directory broken one way; returns spec changes and what the refusal must say."""
    shutil.copytree(src, dst)
    if kind == "no weights":
        (dst / "model_state.pdparams").unlink()
        return {"field": "model.model_name_or_path", "words": [f"{dst} holds no weights", "model_state.pdparams"]}
    if kind == "wrong shapes":
        cfg = json.loads((dst / "config.json").read_text())
        cfg["intermediate_size"] = 96
        (dst / "config.json").write_text(json.dumps(cfg))
        return {"field": "model.model_name_or_path",
                "words": [f"shape mismatch(es) in {dst / 'model_state.pdparams'}", "ernie.encoder.layers.0.linear1.weight: "
                          "file (64, 128) vs model (64, 96)", str(dst / "config.json")]}
    if kind == "missing tensor":
        _drop_tensor(dst / "model_state.pdparams", "ernie.encoder.layers.1.self_attn.q_proj.bias")
        return {"field": "model.model_name_or_path",
                "words": [f"encoder tensor(s) missing from {dst / 'model_state.pdparams'}",
                          "ernie.encoder.layers.1.self_attn.q_proj.bias"]}
    if kind == "missing config":
        (dst / "config.json").unlink()
        return {"field": "model.model_name_or_path", "words": ["missing config", f"{dst} has no config.json"]}
    if kind == "vocab mismatch":
        tokens = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        tokens[10], tokens[11] = tokens[11], tokens[10]
        other = dst.parent / "other_vocab.txt"
        other.write_text("\n".join(tokens) + "\n", encoding="utf-8")
        return {"data": {"vocab_file": str(other)}, "field": "data.vocab_file",
                "words": ["vocab mismatch", str(other), str(dst / "vocab.txt"), "first difference at line 11"]}
    if kind == "overrides":
        return {"model": {"hidden_size": 32, "num_attention_heads": 2}, "field": "model.hidden_size",
                "words": ["32 differs from hidden_size 64", str(dst / "config.json"),
                          "the starting weights would not fit; drop model.hidden_size"]}
    if kind == "manifest":
        from ernie_cluster.pretrained import write_manifest

        write_manifest(dst, {"kind": "pretrained", "name": "tiny"})
        with open(dst / "model_state.pdparams", "ab") as f:
            f.write(b"\0")
        return {"field": "model.model_name_or_path",
                "words": [str(dst / "model_state.pdparams"), "MANIFEST.json says", "it was modified"]}
    raise AssertionError(kind)


BROKEN = ["no weights", "wrong shapes", "missing tensor", "missing config", "vocab mismatch", "overrides", "manifest"]


@pytest.mark.parametrize("kind", BROKEN)
def test_validate_refuses_a_broken_model_directory_naming_the_file(tmp_path, capsys, toy_data, model_dir, kind):
    d = tmp_path / "model"
    case = _broken_copy(model_dir["dir"], d, kind, toy_data["vocab_file"])
    spec = dapt_spec(tmp_path, toy_data, d)
    spec["data"].update(case.get("data", {}))
    spec["model"].update(case.get("model", {}))
    for command in ("validate", "submit", "render"):  # the directory exists here: refused everywhere
        code, out, err, path = _validate(tmp_path, spec, capsys, command)
        assert code == 2, (command, out, err)
        line = next((l for l in err.splitlines() if f": {case['field']}: " in l), None)
        assert line is not None, err
        assert all(w in line for w in case["words"]), (case["words"], line)
        key = case["field"].split(".")[-1]
        if key in path.read_text():
            assert f"spec.yaml:{_line_of(path, key)}: {case['field']}" in line, line
        assert "Traceback" not in err
    assert not (tmp_path / "run").exists(), "nothing may be written or submitted"


def test_the_intact_directory_validates_and_says_where_step_0_starts(tmp_path, capsys, toy_data, model_dir):
    code, out, err, _ = _validate(tmp_path, dapt_spec(tmp_path, toy_data, model_dir["dir"]), capsys)
    assert code == 0, err
    assert f"starts from the weights in {model_dir['dir']} (DAPT)" in out


def test_heads_missing_are_refused_unless_allowed(tmp_path, capsys, toy_data):
    """An ErnieModel-only directory (no cls.* tensors, no 'ernie.' prefix): refused, or fresh heads when allowed."""
    d = tmp_path / "encoder-only"
    _spawn(_write_model_dir, str(d), toy_data["vocab_file"], SEED, False)
    spec = dapt_spec(tmp_path, toy_data, d)
    code, _, err, _ = _validate(tmp_path, spec, capsys)
    assert code == 2
    line = next(l for l in err.splitlines() if ": model.model_name_or_path: " in l)
    assert "pretraining head tensor(s) missing from" in line and "cls.seq_relationship.weight" in line
    assert "model.allow_missing_heads: true" in line and "encoder tensor(s) missing" not in line
    spec["model"]["allow_missing_heads"] = True
    code, out, err, _ = _validate(tmp_path, spec, capsys)
    assert code == 0, err


def test_a_corpus_tokenized_with_another_vocab_is_refused(tmp_path, capsys, toy_data, model_dir):
    prefix = tmp_path / "corpus" / "other"
    prefix.parent.mkdir()
    shutil.copyfile(f"{toy_data['input_prefix']}_ids.npy", f"{prefix}_ids.npy")
    with np.load(f"{toy_data['input_prefix']}_idx.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["vocab_sha256"] = np.array("0" * 64)
    np.savez(f"{prefix}_idx.npz", **arrays)
    spec = dapt_spec(tmp_path, toy_data, model_dir["dir"])
    spec["data"]["input_prefix"] = str(prefix)
    code, _, err, path = _validate(tmp_path, spec, capsys)
    assert code == 2
    line = next(l for l in err.splitlines() if ": data.input_prefix: " in l)
    assert f"the corpus {prefix}_idx.npz was tokenized with a vocab of sha256 000000000000" in line
    assert str(model_dir["dir"] / "vocab.txt") in line and f"spec.yaml:{_line_of(path, 'input_prefix')}:" in line


def test_a_builtin_name_without_random_init_is_refused_with_both_ways_on(tmp_path, capsys, toy_data):
    spec = tiny_spec(tmp_path, toy_data)
    spec["model"].pop("random_init")
    code, _, err, path = _validate(tmp_path, spec, capsys)
    assert code == 2
    line = next(l for l in err.splitlines() if ": model.model_name_or_path: " in l)
    assert f"spec.yaml:{_line_of(path, 'model_name_or_path')}:" in line
    assert "python -m ernie_cluster pretrained ernie-1.0-base-zh --out DIR" in line
    assert "model.model_name_or_path: DIR" in line and "model.random_init: true" in line
    for command in ("render", "submit"):
        assert _validate(tmp_path, spec, capsys, command)[0] == 2
    spec["model"]["random_init"] = True
    code, out, err, _ = _validate(tmp_path, spec, capsys)
    assert code == 0 and "random weights (model.random_init), architecture of the built-in ernie-1.0-base-zh" in out


def test_a_missing_directory_is_only_a_warning_under_render(tmp_path, capsys, toy_data):
    spec = dapt_spec(tmp_path, toy_data, tmp_path / "not-copied-yet")
    code, out, err, _ = _validate(tmp_path, spec, capsys, "render")
    assert code == 0, err
    assert "warning:" in err and "model.model_name_or_path" in err and "pretrained ernie-1.0-base-zh" in err
    assert _validate(tmp_path, spec, capsys, "validate")[0] == 2


def test_runs_frozen_before_random_init_keep_their_meaning(tmp_path):
    """A spec frozen before model.random_init existed: a built-in name meant random weights, a directory DAPT."""
    from ernie_cluster.spec import load_frozen

    for name, expected in (("ernie-1.0-base-zh", True), (str(tmp_path), False)):
        data = {"name": "old", "output_dir": str(tmp_path / "run"), "data": {"input_prefix": "/x"},
                "model": {"model_name_or_path": name, "hidden_size": 64}, "train": {"max_steps": 3}}
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
        assert load_frozen(tmp_path / "spec.yaml").model.random_init is expected


def test_the_pretrained_command_is_wired_into_the_cli():
    r = subprocess.run([PY, "-m", "ernie_cluster", "pretrained", "--help"], cwd=REPO, env=base_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--out" in r.stdout and "--cache-dir" in r.stdout
    r = subprocess.run([PY, "-m", "ernie_cluster", "pretrained", "ernie-9.9-nonexistent", "--out", "/nonexistent/x"],
                       cwd=REPO, env=base_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "is not a PaddleNLP built-in ERNIE model" in r.stderr, r.stderr[-2000:]
