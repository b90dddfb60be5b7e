"""Starting weights (ernie_cluster.weights): every layout loads every tensor exactly; broken ones are refused.

Real paddle and paddlenlp, a tiny ERNIE (vocab 40, hidden 16, 2 layers); no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ernie_cluster import weights as W
from ernie_cluster.weights import WeightsError

REPO = Path(__file__).resolve().parent.parent
TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64, type_vocab_size=2, hidden_act="relu", pad_token_id=0)
VOCAB = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"] + [chr(0x4E00 + i) for i in range(30)]  # 35 <= 40


# ---------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paddle():
    import paddle as _paddle

    _paddle.disable_static()
    return _paddle


@pytest.fixture(scope="module")
def ref(paddle):
    """A tiny ErnieForPretraining with its state (structured name -> numpy) and shapes."""
    from paddlenlp.transformers import ErnieConfig, ErnieForPretraining

    paddle.seed(7)
    model = ErnieForPretraining(ErnieConfig(**TINY))
    state = {k: np.array(v.numpy()) for k, v in model.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return model, state, shapes


def write_vocab(d: Path, tokens=VOCAB, name: str = "vocab.txt") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return d / name


def save_tokenizer(d: Path) -> None:
    from paddlenlp.transformers import ErnieTokenizer

    vocab = write_vocab(d)
    ErnieTokenizer(vocab_file=str(vocab)).save_pretrained(str(d))


def pretrained_dir(ref, d: Path, **kwargs) -> Path:
    model, _, _ = ref
    model.save_pretrained(str(d), **kwargs)
    save_tokenizer(d)
    return d


def assert_loads_exactly(weights, state, shapes, skip=()):
    assert set(weights) == set(shapes)
    for name, value in state.items():
        if name in skip:
            continue
        assert weights[name].shape == shapes[name], name
        assert np.array_equal(weights[name], value), name


def static_checkpoint(paddle, directory: Path, config=TINY):
    """Build the static ErnieForPretraining program, initialise it and `paddle.static.save` it as the
    reference scripts do (model_last/static_vars). Returns (generated name -> value, structured -> generated)."""
    from paddlenlp.transformers import ErnieConfig, ErnieForPretraining

    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
            ids = paddle.static.data("input_ids", [-1, 8], "int64")
            model = ErnieForPretraining(ErnieConfig(**config))
            model(input_ids=ids)
            names = {k: v.name for k, v in model.state_dict().items()}
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(startup)
            directory.mkdir(parents=True, exist_ok=True)
            paddle.static.save(main, str(directory / "static_vars"))
            values = {p.name: np.array(scope.find_var(p.name).get_tensor()) for p in main.all_parameters()}
    finally:
        paddle.disable_static()
    return values, names


def rewrite_pdparams(paddle, path: Path, edit) -> None:
    state = paddle.load(str(path), return_numpy=True)
    state.pop("StructuredToParameterName@@", None)
    edit(state)
    paddle.save(state, str(path))


# ---------------------------------------------------------------------------
# the paddle-free layer
# ---------------------------------------------------------------------------


def test_importing_weights_and_pretrained_loads_neither_paddle_nor_numpy():
    code = ("import sys, ernie_cluster.weights, ernie_cluster.pretrained; "
            "bad = [m for m in ('paddle', 'paddlenlp', 'numpy') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_builtin_configs_match_paddlenlp(paddle):
    from paddlenlp.transformers.ernie.configuration import (ERNIE_PRETRAINED_INIT_CONFIGURATION,
                                                             ERNIE_PRETRAINED_RESOURCE_FILES_MAP)

    for name, cfg in W.BUILTIN_CONFIGS.items():
        assert ERNIE_PRETRAINED_INIT_CONFIGURATION[name] == cfg, name
        url = ERNIE_PRETRAINED_RESOURCE_FILES_MAP["model_state"][name]
        assert url.rsplit("/", 1)[-1] == W.LEGACY_CACHE_WEIGHTS[name]
    from paddlenlp.utils import env

    assert (env.CONFIG_NAME, env.LEGACY_CONFIG_NAME) == W.CONFIG_NAMES
    assert (env.PADDLE_WEIGHTS_NAME, env.PADDLE_WEIGHTS_INDEX_NAME) == (W.PADDLE_WEIGHTS_NAME, W.PADDLE_WEIGHTS_INDEX_NAME)
    assert (env.SAFE_WEIGHTS_NAME, env.SAFE_WEIGHTS_INDEX_NAME) == (W.SAFE_WEIGHTS_NAME, W.SAFE_WEIGHTS_INDEX_NAME)


# ---------------------------------------------------------------------------
# every layout loads every tensor, equal to the source
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,fmt,sharded", [
    ({}, "pdparams", False),
    ({"safe_serialization": True}, "safetensors", False),
    ({"max_shard_size": "2KB"}, "pdparams_sharded", True),
    ({"safe_serialization": True, "max_shard_size": "2KB"}, "safetensors_sharded", True),
])
def test_save_pretrained_layouts(ref, tmp_path, kwargs, fmt, sharded):
    _, state, shapes = ref
    d = pretrained_dir(ref, tmp_path / "model", **kwargs)
    src = W.resolve_model_dir(d)
    assert (src.layout, src.weights_format) == ("save_pretrained", fmt)
    assert (src.index_file is not None) == sharded and (len(src.weight_files) > 1) == sharded
    assert src.config["vocab_size"] == 40 and src.config_file == d / "config.json"
    assert src.vocab_file == d / "vocab.txt" and src.vocab_size == len(VOCAB)
    weights, report = W.load_starting_weights(src, shapes)
    assert_loads_exactly(weights, state, shapes)
    assert report.fresh_heads == [] and report.n_tensors == 46 and report.checksum == W.tensor_checksum(state)


def test_safetensors_header_is_read_without_paddle(ref, tmp_path):
    _, _, shapes = ref
    d = pretrained_dir(ref, tmp_path / "model", safe_serialization=True)
    header = W.safetensors_header(d / "model.safetensors")
    assert {k: tuple(v["shape"]) for k, v in header.items()} == {k: shapes[k] for k in header}


def test_ernie_model_only_file_maps_and_heads_need_the_flag(ref, tmp_path):
    model, state, shapes = ref
    d = tmp_path / "encoder"
    model.ernie.save_pretrained(str(d))  # ErnieModel.save_pretrained: keys without 'ernie.'
    save_tokenizer(d)
    raw = json.loads((d / "config.json").read_text())
    assert raw["architectures"] == ["ErnieModel"]
    src = W.resolve_model_dir(d)
    with pytest.raises(WeightsError) as exc:
        W.load_starting_weights(src, shapes)
    msg = str(exc.value)
    assert "pretraining head tensor(s) missing" in msg and "cls.seq_relationship.weight" in msg
    assert "allow_missing_heads" in msg and str(d / "model_state.pdparams") in msg
    fresh = {k: np.full(v, 0.5, "float32") for k, v in shapes.items()}
    weights, report = W.load_starting_weights(src, shapes, allow_missing_heads=True, fresh=lambda: fresh)
    # the MLM decoder weight is the word embedding (tied), so it comes from the file too
    heads = sorted(k for k in shapes if k.startswith("cls.") and k != "cls.predictions.decoder.weight")
    assert report.fresh_heads == heads
    for k in shapes:
        assert np.array_equal(weights[k], fresh[k] if k in heads else state[k]), k
    assert report.checksum == W.tensor_checksum({k: state[k] for k in shapes if k not in heads})
    assert any("without the 'ernie.' prefix" in n for n in report.notes)
    # without `fresh` the heads are left to the caller (strict=False) and still listed
    weights, report = W.load_starting_weights(src, shapes, allow_missing_heads=True)
    assert set(weights) == set(shapes) - set(heads) and report.fresh_heads == heads


def test_paddlenlp_cache_layout_of_older_releases(ref, tmp_path, paddle):
    """<cache>/ernie-1.0-base-zh/ernie_v1_chn_base.pdparams + model_config.json + vocab.txt."""
    _, state, shapes = ref
    d = tmp_path / "models" / "ernie-1.0-base-zh"
    d.mkdir(parents=True)
    paddle.save(state, str(d / "ernie_v1_chn_base.pdparams"))
    (d / "model_config.json").write_text(json.dumps({"init_args": [TINY], "init_class": "ErnieModel"}))
    write_vocab(d)
    src = W.resolve_model_dir(d)
    assert (src.layout, src.weights_format, src.builtin_name) == ("paddlenlp_cache", "pdparams", "ernie-1.0-base-zh")
    assert src.weight_files == (d / "ernie_v1_chn_base.pdparams",) and src.config == TINY
    weights, _ = W.load_starting_weights(src, shapes)
    assert_loads_exactly(weights, state, shapes)


def test_paddlenlp_2_8_cache_layout_takes_the_builtin_config(ref, tmp_path, paddle):
    """PaddleNLP 2.8.1 caches model_state.pdparams + vocab.txt + tokenizer files, and no config."""
    _, state, shapes = ref
    d = tmp_path / "models" / "ernie-1.0-base-zh"
    d.mkdir(parents=True)
    paddle.save(state, str(d / "model_state.pdparams"))
    save_tokenizer(d)
    src = W.resolve_model_dir(d)
    assert (src.layout, src.config_origin) == ("paddlenlp_cache", "built-in ernie-1.0-base-zh")
    assert src.config == W.BUILTIN_CONFIGS["ernie-1.0-base-zh"] and src.config_file is None
    # the tiny tensors do not fit the built-in shape the run would build from that config
    base_shapes = expected_shapes_for(paddle, src.config)
    with pytest.raises(WeightsError) as exc:
        W.load_starting_weights(src, base_shapes)
    assert "shape mismatch" in str(exc.value)
    assert "ernie.embeddings.word_embeddings.weight: file (40, 16) vs model (18000, 768)" in str(exc.value)


def expected_shapes_for(paddle, config):
    """Parameter shapes of ErnieForPretraining(config), from a static program (no tensors allocated)."""
    from paddlenlp.transformers import ErnieConfig, ErnieForPretraining

    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
            return {k: tuple(v.shape) for k, v in ErnieForPretraining(ErnieConfig(**config)).state_dict().items()}
    finally:
        paddle.disable_static()


def project_model_dir(ref, d: Path, report: bool = False) -> Path:
    """What the trainer's snapshots and the converter write (write_model_dir + write_model_config + tokenizer)."""
    from ernie_cluster.train.checkpoint import write_model_dir
    from ernie_cluster.train.model import write_model_config

    _, state, _ = ref

    def extras(tmp: Path) -> None:
        write_model_config(dict(TINY), tmp)
        save_tokenizer(tmp)
        if report:
            (tmp / "convert_report.json").write_text("{}\n")

    return write_model_dir(d, state, extras)


def test_snapshot_and_converted_layouts(ref, tmp_path):
    _, state, shapes = ref
    snap = project_model_dir(ref, tmp_path / "run" / "snapshots" / "model_10")
    conv = project_model_dir(ref, tmp_path / "run" / "converted", report=True)
    for d, layout in ((snap, "snapshot"), (conv, "converted")):
        src = W.resolve_model_dir(d)
        assert src.layout == layout and src.config_file == d / "config.json"
        weights, report = W.load_starting_weights(src, shapes)
        assert_loads_exactly(weights, state, shapes)
        assert report.layout == layout


def test_checkpoint_layout_with_manifest(ref, tmp_path, paddle):
    from ernie_cluster.pretrained import write_manifest

    _, state, shapes = ref
    d = tmp_path / "run" / "checkpoints" / "step_000000005"
    d.mkdir(parents=True)
    paddle.save(state, str(d / "model_state.pdparams"))
    (d / "trainer_state.json").write_text(json.dumps({"step": 5, "model_config": dict(TINY, hidden_dropout_prob=0.0)}))
    write_manifest(d, {"step": 5})
    src = W.resolve_model_dir(d)
    assert src.layout == "checkpoint" and src.config["hidden_size"] == 16 and src.vocab_file is None
    weights, _ = W.load_starting_weights(src, shapes)
    assert_loads_exactly(weights, state, shapes)
    (d.parent / "model_last").symlink_to(d.name)
    assert W.resolve_model_dir(d.parent / "model_last").layout == "checkpoint"
    with open(d / "model_state.pdparams", "r+b") as f:  # same size, different bytes
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WeightsError, match="model_state.pdparams has sha256"):
        W.load_starting_weights(src, shapes)


def test_static_vars_of_the_installed_paddlenlp(paddle, ref, tmp_path):
    _, _, shapes = ref
    d = tmp_path / "output" / "model_last"
    values, names = static_checkpoint(paddle, d)
    assert "linear_14.w_0" in values and "linear_14.w_0" not in names.values()  # the untied decoder weight
    src = W.resolve_model_dir(d, config=TINY)
    assert (src.layout, src.weights_format, src.config_origin) == ("static_vars", "static_vars", "the caller's config")
    weights, report = W.load_starting_weights(src, shapes)
    assert_loads_exactly(weights, {s: values[v] for s, v in names.items()}, shapes)
    assert report.mapping == "static program of the installed PaddleNLP"
    assert any("linear_14.w_0" in n for n in report.notes)
    # the reference names the checkpoint by its prefix
    assert W.resolve_model_dir(d / "static_vars", config=TINY).weight_files == (d / "static_vars.pdparams",)


def test_static_vars_with_older_paddlenlp_heads(paddle, ref, tmp_path):
    """Older ErnieLMPredictionHead: `decoder_bias` created by the head (ernie_lm_prediction_head_0.b_0), no
    decoder Linear, so the sentence-order linear is linear_14 (tiny: pooler linear_12, transform linear_13)."""
    _, _, shapes = ref
    d = tmp_path / "model_last"
    values, names = static_checkpoint(paddle, d)
    old = {k: v for k, v in values.items() if not k.startswith(("linear_14.", "linear_15."))}
    old["ernie_lm_prediction_head_0.b_0"] = values["linear_14.b_0"]
    old["linear_14.w_0"], old["linear_14.b_0"] = values["linear_15.w_0"], values["linear_15.b_0"]
    paddle.save(old, str(d / "static_vars.pdparams"))
    (d / "config.json").write_text(json.dumps(TINY))
    src = W.resolve_model_dir(d)
    weights, report = W.load_starting_weights(src, shapes)
    assert report.mapping == "static program with the older PaddleNLP heads"
    assert_loads_exactly(weights, {s: values[v] for s, v in names.items()}, shapes)


def test_static_vars_config_from_the_reference_config_yml(tmp_path, paddle):
    d = tmp_path / "model_last"
    d.mkdir()
    paddle.save({"embedding_0.w_0": np.zeros((2, 2), "float32")}, str(d / "static_vars.pdparams"))
    (d / "config.yml").write_text("model_name: ernie-1.0-base-zh\nglobal_step: 5\nglobal_batch_size: 8\n")
    src = W.resolve_model_dir(d)
    assert src.config == W.BUILTIN_CONFIGS["ernie-1.0-base-zh"] and src.config_origin == "built-in ernie-1.0-base-zh"


# ---------------------------------------------------------------------------
# broken directories are refused, naming the file
# ---------------------------------------------------------------------------


def test_no_weights(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY))
    with pytest.raises(WeightsError) as exc:
        W.resolve_model_dir(d)
    assert f"{d} holds no weights" in str(exc.value) and "model_state.pdparams" in str(exc.value)
    with pytest.raises(WeightsError, match="does not exist"):
        W.resolve_model_dir(tmp_path / "nope")


def test_missing_config(ref, tmp_path, paddle):
    _, state, _ = ref
    d = tmp_path / "noconfig"
    d.mkdir()
    paddle.save(state, str(d / "model_state.pdparams"))
    with pytest.raises(WeightsError) as exc:
        W.resolve_model_dir(d)
    assert "missing config" in str(exc.value) and "config.json or model_config.json" in str(exc.value)
    assert str(d) in str(exc.value)


def test_config_that_is_not_json_or_not_ernie(ref, tmp_path):
    d = pretrained_dir(ref, tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match=r"config\.json is not readable JSON"):
        W.resolve_model_dir(d)
    (d / "config.json").write_text(json.dumps({"hidden_size": 16}))
    with pytest.raises(WeightsError, match="lacks vocab_size, num_hidden_layers, num_attention_heads"):
        W.resolve_model_dir(d)


def test_vocab_larger_than_config_vocab_size(ref, tmp_path):
    d = pretrained_dir(ref, tmp_path / "m")
    write_vocab(d, VOCAB + [f"tok{i}" for i in range(10)])  # 45 > 40
    with pytest.raises(WeightsError) as exc:
        W.resolve_model_dir(d)
    assert "vocab size mismatch" in str(exc.value) and str(d / "vocab.txt") in str(exc.value)
    assert str(d / "config.json") in str(exc.value) and "45 tokens" in str(exc.value)


def test_spec_side_reads_the_config_without_weights_and_without_checks(ref, tmp_path, paddle):
    """The spec reports shape problems itself: model_dir_config needs no weights, check=False skips shape checks."""
    d = tmp_path / "config_only"
    d.mkdir()
    (d / "model_config.json").write_text(json.dumps(dict(TINY, num_attention_heads=5)))
    assert W.model_dir_config(d) == (dict(TINY, num_attention_heads=5), str(d / "model_config.json"))
    with pytest.raises(WeightsError, match="holds no weights"):
        W.resolve_model_dir(d, check=False)
    _, state, _ = ref
    paddle.save(state, str(d / "model_state.pdparams"))
    write_vocab(d, VOCAB + [f"t{i}" for i in range(10)])
    with pytest.raises(WeightsError, match="not divisible"):
        W.resolve_model_dir(d)
    src = W.resolve_model_dir(d, check=False)
    assert src.vocab_size == 45 and src.config["num_attention_heads"] == 5
    cache = tmp_path / "ernie-1.0"  # a cache directory: the built-in config by its name
    cache.mkdir()
    assert W.model_dir_config(cache) == (W.BUILTIN_CONFIGS["ernie-1.0"], "built-in ernie-1.0")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(WeightsError, match="missing config"):
        W.model_dir_config(tmp_path / "nothing")


def test_wrong_shape_and_missing_encoder_tensor(ref, tmp_path, paddle):
    _, state, shapes = ref
    d = pretrained_dir(ref, tmp_path / "m")
    f = d / "model_state.pdparams"

    def edit(s):
        s["ernie.encoder.layers.0.linear1.weight"] = s["ernie.encoder.layers.0.linear1.weight"][:, :8]
        del s["ernie.encoder.layers.1.norm2.bias"]

    rewrite_pdparams(paddle, f, edit)
    with pytest.raises(WeightsError) as exc:
        W.load_starting_weights(W.resolve_model_dir(d), shapes)
    msg = str(exc.value)
    assert "ernie.encoder.layers.0.linear1.weight: file (16, 8) vs model (16, 32)" in msg
    assert "encoder tensor(s) missing" in msg and "ernie.encoder.layers.1.norm2.bias" in msg and str(f) in msg


def test_unused_tensor_and_untied_decoder(ref, tmp_path, paddle):
    _, state, shapes = ref
    d = pretrained_dir(ref, tmp_path / "m")
    f = d / "model_state.pdparams"
    rewrite_pdparams(paddle, f, lambda s: s.update({"classifier.weight": np.zeros((16, 3), "float32")}))
    unused = r"1 tensor\(s\) in .*model_state.pdparams map to no parameter.*classifier.weight"
    with pytest.raises(WeightsError, match=unused):
        W.load_starting_weights(W.resolve_model_dir(d), shapes)
    weights, report = W.load_starting_weights(W.resolve_model_dir(d), shapes, ignore_unused=True)
    assert_loads_exactly(weights, state, shapes) and any("classifier.weight" in n for n in report.notes)

    def untie(s):
        s.pop("classifier.weight")
        s["cls.predictions.decoder.weight"] = s["cls.predictions.decoder.weight"] + 1.0

    rewrite_pdparams(paddle, f, untie)
    untied = "cls.predictions.decoder.weight and ernie.embeddings.word_embeddings.weight differ"
    with pytest.raises(WeightsError, match=untied):
        W.load_starting_weights(W.resolve_model_dir(d), shapes)


def test_older_heads_decoder_weight_key_is_accepted_when_tied(ref, tmp_path, paddle):
    _, state, shapes = ref
    d = pretrained_dir(ref, tmp_path / "m")

    def older(s):  # an older PaddleNLP ErnieForPretraining state_dict
        s["cls.predictions.decoder_weight"] = s.pop("cls.predictions.decoder.weight")
        s.pop("cls.predictions.decoder.bias")

    rewrite_pdparams(paddle, d / "model_state.pdparams", older)
    weights, report = W.load_starting_weights(W.resolve_model_dir(d), shapes)
    assert_loads_exactly(weights, state, shapes)
    assert any("decoder_weight" in n for n in report.notes)


def test_missing_shard(ref, tmp_path):
    d = pretrained_dir(ref, tmp_path / "m", max_shard_size="2KB")
    index = json.loads((d / "model_state.pdparams.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[3]
    (d / shard).unlink()
    with pytest.raises(WeightsError) as exc:
        W.resolve_model_dir(d)
    assert str(d / "model_state.pdparams.index.json") in str(exc.value) and shard in str(exc.value)


def test_unmapped_static_vars_name(paddle, ref, tmp_path):
    _, _, shapes = ref
    d = tmp_path / "model_last"
    static_checkpoint(paddle, d)
    rewrite_pdparams(paddle, d / "static_vars.pdparams",
                     lambda s: s.update({"foo_0.w_0": np.zeros((3,), "float32")}))
    src = W.resolve_model_dir(d, config=TINY)
    with pytest.raises(WeightsError) as exc:
        W.load_starting_weights(src, shapes)
    assert str(d / "static_vars.pdparams") in str(exc.value) and "foo_0.w_0" in str(exc.value)
    assert "1 variable(s) match no parameter" in str(exc.value)


def test_static_vars_built_for_another_config_is_refused(paddle, ref, tmp_path):
    _, _, shapes = ref
    d = tmp_path / "model_last"
    static_checkpoint(paddle, d, dict(TINY, num_hidden_layers=3))  # more linears than the tiny program has
    with pytest.raises(WeightsError, match="match no parameter"):
        W.load_starting_weights(W.resolve_model_dir(d, config=TINY), shapes)


def test_static_vars_with_other_shapes_is_refused_naming_them(paddle, ref, tmp_path):
    _, _, shapes = ref
    d = tmp_path / "model_last"
    static_checkpoint(paddle, d, dict(TINY, hidden_size=32))
    with pytest.raises(WeightsError) as exc:
        W.load_starting_weights(W.resolve_model_dir(d, config=TINY), shapes)
    assert "embedding_0.w_0 (file (40, 32) vs program (40, 16))" in str(exc.value)


def test_save_persistables_directory_is_named_unsupported(tmp_path):
    d = tmp_path / "model_last"
    (d / "static_vars").mkdir(parents=True)
    (d / "static_vars" / "embedding_0.w_0").write_bytes(b"x")
    with pytest.raises(WeightsError, match="save_persistables directory"):
        W.resolve_model_dir(d)


# ---------------------------------------------------------------------------
# checksum and report
# ---------------------------------------------------------------------------


def test_checksum_is_stable_and_changes_with_one_value(ref, tmp_path, paddle):
    _, state, shapes = ref
    d = pretrained_dir(ref, tmp_path / "m")
    _, r1 = W.load_starting_weights(W.resolve_model_dir(d), shapes)
    _, r2 = W.load_starting_weights(W.resolve_model_dir(d), shapes)
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(state[name]).tobytes())
    assert r1.checksum == r2.checksum == h.hexdigest()

    def bump(s):
        s["ernie.encoder.layers.1.linear2.bias"] = s["ernie.encoder.layers.1.linear2.bias"].copy()
        s["ernie.encoder.layers.1.linear2.bias"][3] += 1e-3

    rewrite_pdparams(paddle, d / "model_state.pdparams", bump)
    _, r3 = W.load_starting_weights(W.resolve_model_dir(d), shapes)
    assert r3.checksum != r1.checksum


def test_report_summary_dict_and_text(ref, tmp_path):
    _, state, shapes = ref
    d = pretrained_dir(ref, tmp_path / "m")
    _, report = W.load_starting_weights(W.resolve_model_dir(d), shapes)
    line = report.summary()
    assert "\n" not in line and str(d) in line and "46 tensors" in line and report.checksum[:16] in line
    data = report.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["n_parameters"] == sum(v.size for k, v in state.items() if k not in W.ERNIE_TIES)
    assert report.checksum in report.text() and "heads initialised fresh: none" in report.text()


def test_float16_source_is_cast_and_reported(ref, tmp_path, paddle):
    _, state, shapes = ref
    d = pretrained_dir(ref, tmp_path / "m")
    rewrite_pdparams(paddle, d / "model_state.pdparams",
                     lambda s: s.update({"ernie.pooler.dense.bias": s["ernie.pooler.dense.bias"].astype("float16")}))
    weights, report = W.load_starting_weights(W.resolve_model_dir(d), shapes)
    assert weights["ernie.pooler.dense.bias"].dtype == np.float32 and report.cast == ["ernie.pooler.dense.bias (float16)"]


# ---------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------


def write_corpus(prefix: Path, digest=None) -> Path:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    np.save(f"{prefix}_ids.npy", np.arange(6, dtype=np.uint16))
    arrays = dict(lens=np.array([3, 3], np.int32), sents=np.array([0, 3, 6], np.int64), docs=np.array([0, 2], np.int64))
    if digest is not None:
        arrays[W.CORPUS_VOCAB_KEY] = np.array(digest)
    np.savez(f"{prefix}_idx.npz", **arrays)
    return Path(f"{prefix}_idx.npz")


def test_vocab_defaults_to_the_model_directory(ref, tmp_path):
    d = pretrained_dir(ref, tmp_path / "m")
    check = W.check_vocab(W.resolve_model_dir(d))
    assert check.vocab_file == d / "vocab.txt" and check.size == len(VOCAB)
    assert check.sha256 == W.vocab_digest(d / "vocab.txt") == hashlib.sha256("\n".join(VOCAB).encode()).hexdigest()


def test_given_vocab_must_equal_the_models(ref, tmp_path):
    d = pretrained_dir(ref, tmp_path / "m")
    src = W.resolve_model_dir(d)
    same = tmp_path / "same_vocab.txt"
    same.write_text("\n".join(VOCAB), encoding="utf-8")  # no final newline: same tokens
    assert W.check_vocab(src, vocab_file=same).sha256 == W.vocab_digest(d / "vocab.txt")
    other = write_vocab(tmp_path / "other", VOCAB[:5] + list(reversed(VOCAB[5:])))
    with pytest.raises(WeightsError) as exc:
        W.check_vocab(src, vocab_file=other)
    assert "vocab mismatch" in str(exc.value) and str(other) in str(exc.value) and str(d / "vocab.txt") in str(exc.value)
    assert "first difference at line 6" in str(exc.value)


def test_vocab_needed_and_size_checked_without_a_model_vocab(paddle, tmp_path):
    d = tmp_path / "model_last"
    static_checkpoint(paddle, d)
    src = W.resolve_model_dir(d, config=TINY)
    with pytest.raises(WeightsError, match="no vocab.*set data.vocab_file"):
        W.check_vocab(src)
    big = write_vocab(tmp_path / "v", VOCAB + [f"t{i}" for i in range(10)])
    with pytest.raises(WeightsError, match="45 tokens but the caller's config says vocab_size 40"):
        W.check_vocab(src, vocab_file=big)
    assert W.check_vocab(src, vocab_file=write_vocab(tmp_path / "ok")).size == len(VOCAB)


def test_corpus_vocab_record(ref, tmp_path):
    d = pretrained_dir(ref, tmp_path / "m")
    src = W.resolve_model_dir(d)
    digest = W.vocab_digest(d / "vocab.txt")
    write_corpus(tmp_path / "data" / "a", digest)
    write_corpus(tmp_path / "data" / "b")  # tokenized before the digest was recorded
    check = W.check_vocab(src, corpus_prefix=tmp_path / "data")
    assert check.corpora == [(str(tmp_path / "data" / "a_idx.npz"), "match"),
                             (str(tmp_path / "data" / "b_idx.npz"), "unrecorded")]
    assert "1 record no vocab" in check.summary()
    bad = write_corpus(tmp_path / "c" / "corpus", "0" * 64)
    with pytest.raises(WeightsError) as exc:
        W.check_vocab(src, corpus_prefix=tmp_path / "c" / "corpus")
    assert str(bad) in str(exc.value) and str(d / "vocab.txt") in str(exc.value)
    with pytest.raises(WeightsError, match="does not exist"):
        W.check_vocab(src, corpus_prefix=tmp_path / "missing" / "corpus")


def test_both_weight_files_present_follows_paddlenlp_order(ref, tmp_path):
    _, state, shapes = ref
    d = pretrained_dir(ref, tmp_path / "m")
    shutil.copy(pretrained_dir(ref, tmp_path / "s", safe_serialization=True) / "model.safetensors", d)
    src = W.resolve_model_dir(d)
    assert src.weights_format == "safetensors" and src.ignored_files == ("model_state.pdparams",)
    assert any("also present, not used: model_state.pdparams" in n for n in src.notes)


# ---------------------------------------------------------------------------
# names and shapes without paddle (what `validate` checks on the login node)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, {"use_task_id": True, "task_type_vocab_size": 3, "type_vocab_size": 4},
                                   {"intermediate_size": 48, "max_position_embeddings": 20, "num_hidden_layers": 3}])
def test_ernie_pretraining_shapes_equal_paddlenlps(paddle, extra):
    from paddlenlp.transformers import ErnieConfig, ErnieForPretraining

    config = {**TINY, **extra}
    real = {k: tuple(v.shape) for k, v in ErnieForPretraining(ErnieConfig(**config)).state_dict().items()}
    assert W.ernie_pretraining_shapes(config) == real
    # the built-in configs too (a key the config leaves out takes ErnieConfig's default)
    for name, builtin in W.BUILTIN_CONFIGS.items():
        shapes = W.ernie_pretraining_shapes(builtin)
        cfg = ErnieConfig(**builtin)
        assert shapes["ernie.encoder.layers.0.linear1.weight"] == (cfg.hidden_size, cfg.intermediate_size), name
        assert len([k for k in shapes if k.endswith("norm2.bias")]) == cfg.num_hidden_layers, name


@pytest.mark.parametrize("kwargs", [{}, {"safe_serialization": True}, {"max_shard_size": "2KB"},
                                    {"safe_serialization": True, "max_shard_size": "2KB"}])
def test_tensor_shapes_are_read_without_paddle_in_every_layout(ref, tmp_path, kwargs):
    _, _, shapes = ref
    d = pretrained_dir(ref, tmp_path / "m", **kwargs)
    code = ("import sys, json; from ernie_cluster import weights as W; s = W.resolve_model_dir(sys.argv[1]); "
            "sh = W.tensor_shapes(s); p = W.shape_problems(s, W.ernie_pretraining_shapes(s.config)); "
            "bad = [m for m in ('paddle', 'paddlenlp', 'numpy') if m in sys.modules]; "
            "print(json.dumps({'shapes': sh, 'problems': p, 'imported': bad}))")
    out = subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True, cwd=REPO, check=True)
    res = json.loads(out.stdout)
    assert res["imported"] == [] and res["problems"] == []
    assert {k: tuple(v) for k, v in res["shapes"].items()} == {k: shapes[k] for k in res["shapes"]}


def test_shape_problems_say_what_load_starting_weights_says(ref, tmp_path, paddle):
    _, _, shapes = ref
    d = pretrained_dir(ref, tmp_path / "m")
    f = d / "model_state.pdparams"

    def edit(s):
        s["ernie.encoder.layers.0.linear1.weight"] = s["ernie.encoder.layers.0.linear1.weight"][:, :8]
        del s["ernie.encoder.layers.1.norm2.bias"]
        del s["cls.seq_relationship.bias"]
        s["classifier.weight"] = np.zeros((16, 3), "float32")

    rewrite_pdparams(paddle, f, edit)
    src = W.resolve_model_dir(d)
    problems = W.shape_problems(src, W.ernie_pretraining_shapes(src.config))
    text = "\n".join(problems)
    assert "ernie.encoder.layers.0.linear1.weight: file (16, 8) vs model (16, 32)" in text and str(f) in text
    assert "encoder tensor(s) missing" in text and "ernie.encoder.layers.1.norm2.bias" in text
    assert "pretraining head tensor(s) missing" in text and "cls.seq_relationship.bias" in text
    assert "map to no parameter" in text and "classifier.weight" in text
    with pytest.raises(WeightsError) as exc:
        W.load_starting_weights(src, shapes)
    for p in problems:  # the trainer refuses the same things
        assert p.split(":")[0] in str(exc.value)
    relaxed = W.shape_problems(src, W.ernie_pretraining_shapes(src.config), allow_missing_heads=True)
    assert not any("head tensor" in p for p in relaxed) and len(relaxed) == 3


def test_encoder_only_file_needs_only_the_heads_flag(ref, tmp_path):
    model, _, _ = ref
    d = tmp_path / "encoder"
    model.ernie.save_pretrained(str(d))
    src = W.resolve_model_dir(d)
    expected = W.ernie_pretraining_shapes(src.config)
    (problem,) = W.shape_problems(src, expected)
    assert "pretraining head tensor(s) missing" in problem and "allow_missing_heads" in problem
    assert W.shape_problems(src, expected, allow_missing_heads=True) == []


def test_the_shape_reader_runs_nothing_from_the_file(tmp_path):
    """A pickle that would run a command is never executed: the shape reader allows numpy's arrays only."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    import pickle

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(TINY))
    with open(d / "model_state.pdparams", "wb") as f:
        pickle.dump({"ernie.embeddings.word_embeddings.weight": Evil()}, f, protocol=4)
    src = W.resolve_model_dir(d)
    assert W.tensor_shapes(src) is None and W.shape_problems(src, W.ernie_pretraining_shapes(TINY)) == []
    assert not (tmp_path / "pwned").exists()
    (d / "model_state.pdparams").write_bytes(b"\x80\x04\x95")  # truncated
    with pytest.raises(WeightsError, match="damaged or incomplete"):
        W.tensor_shapes(src)


def test_corpus_records_are_read_as_data_tools_reads_them(tmp_path):
    """The key, the corpora of a prefix and the recorded digest have one home: data_tools."""
    from data_tools.indexed import IndexedDataset, corpus_prefixes
    from data_tools.vocab import CORPUS_VOCAB_KEY

    assert W.CORPUS_VOCAB_KEY is CORPUS_VOCAB_KEY
    data = tmp_path / "data"
    for name in ("a_b", "a"):
        write_corpus(data / name, "f" * 64)
    np.save(data / "orphan_ids.npy", np.arange(3, dtype=np.uint16))  # no _idx.npz: not a corpus
    np.savez(data / "lonely_idx.npz", lens=np.array([1], np.int32))  # no _ids.npy: not a corpus
    assert W.corpus_idx_files(data) == [Path(p + "_idx.npz") for p in corpus_prefixes(str(data))]
    assert [f.name for f in W.corpus_idx_files(data)] == ["a_idx.npz", "a_b_idx.npz"]  # training's order
    assert W.corpus_idx_files(data / "a") == [data / "a_idx.npz"]
    assert W.corpus_vocab_digest(data / "a_idx.npz") == IndexedDataset(str(data / "a")).vocab_sha256 == "f" * 64
    (tmp_path / "empty").mkdir()
    assert W.corpus_idx_files(tmp_path / "empty") == []  # nothing to check, as before (data_tools raises here)


def test_a_corpus_vocab_record_that_is_not_one_string_is_refused(tmp_path):
    idx = write_corpus(tmp_path / "c", np.array([1, 2]))
    with pytest.raises(WeightsError, match=r"corpus index .*c_idx\.npz: cannot read it .*must be a single string"):
        W.corpus_vocab_digest(idx)
    np.savez(tmp_path / "b_idx.npz", vocab_sha256=np.array(b"ab" * 32))  # bytes: decoded, as data_tools does
    assert W.corpus_vocab_digest(tmp_path / "b_idx.npz") == "ab" * 32
