"""`python -m ernie_cluster pretrained NAME --out DIR` against a stand-in of PaddleNLP's download cache.

Nothing downloads here, so each test lays out PaddleNLP 2.8.1's cache for ``ernie-1.0-base-zh`` itself
(``<cache>/ernie-1.0-base-zh/model_state.pdparams`` + ``vocab.txt``, a tiny ERNIE: the built-in config
entry is patched to the tiny shape) and blocks every socket: PaddleNLP's real from_pretrained code path
then runs offline, and any attempt to reach the network fails the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ernie_cluster import pretrained as P
from ernie_cluster import weights as W

REPO = Path(__file__).resolve().parent.parent
NAME = "ernie-1.0-base-zh"
TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64)
VOCAB = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"] + [chr(0x4E00 + i) for i in range(30)]


class NetworkUsed(OSError):
    pass


def _no_network(*args, **kwargs):
    raise NetworkUsed("a test tried to reach the network")


@pytest.fixture()
def offline(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)


@pytest.fixture()
def tiny_builtin(monkeypatch):
    """PaddleNLP's built-in ernie-1.0-base-zh config, shrunk to the tiny shape for this test."""
    import paddle

    from paddlenlp.transformers.ernie.configuration import ERNIE_PRETRAINED_INIT_CONFIGURATION

    paddle.disable_static()
    for key, value in TINY.items():
        monkeypatch.setitem(ERNIE_PRETRAINED_INIT_CONFIGURATION[NAME], key, value)
    return dict(ERNIE_PRETRAINED_INIT_CONFIGURATION[NAME])


def make_cache(root: Path, config, *, heads: bool = True, weights_name: str = "model_state.pdparams", seed: int = 11):
    """<root>/ernie-1.0-base-zh/ as PaddleNLP leaves it after a download. Returns the source state."""
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieForPretraining

    paddle.seed(seed)
    model = ErnieForPretraining(ErnieConfig(**config))
    state = {k: np.array(v.numpy()) for k, v in model.state_dict().items()}
    if not heads:  # an ErnieModel file: no 'ernie.' prefix, no cls.*
        state = {k[len("ernie."):]: v for k, v in state.items() if k.startswith("ernie.")}
    d = root / NAME
    d.mkdir(parents=True, exist_ok=True)
    paddle.save(state, str(d / weights_name))
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return state


def loaded_state(model):
    return {k: np.array(v.numpy()) for k, v in model.state_dict().items()}


def test_fetch_writes_a_model_dir_from_pretrained_loads_identically(tmp_path, offline, tiny_builtin):
    from paddlenlp.transformers import ErnieForPretraining, ErnieModel, ErnieTokenizer

    cache = tmp_path / "ppnlp" / "models"
    source = make_cache(cache, tiny_builtin)
    vocab_bytes = "\n".join(VOCAB).encode("utf-8")  # no final newline: PaddleNLP's own rewrite would add one
    (cache / NAME / "vocab.txt").write_bytes(vocab_bytes)
    out = tmp_path / "pretrained" / NAME
    manifest = P.fetch_pretrained(NAME, out, cache_dir=cache, log=lambda m: None)

    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["MANIFEST.json", "config.json", "model_state.pdparams", "vocab.txt", "tokenizer_config.json",
         "special_tokens_map.json"])
    assert manifest["kind"] == "pretrained" and manifest["name"] == NAME and manifest["heads_in_source"] is True
    assert manifest["model_class"] == "ErnieForPretraining"
    assert manifest["source"]["weights"] == str(cache / NAME / "model_state.pdparams")
    assert manifest["source"]["url"].endswith("/ernie_v1_chn_base.pdparams")
    assert set(manifest["files"]) == {"config.json", "model_state.pdparams", "vocab.txt", "tokenizer_config.json",
                                      "special_tokens_map.json"}
    assert P.verify_manifest(out) == json.loads((out / "MANIFEST.json").read_text())

    model = ErnieForPretraining.from_pretrained(str(out))
    got = loaded_state(model)
    assert set(got) == set(source)
    for k, v in source.items():
        assert np.array_equal(got[k], v), k
    encoder = loaded_state(ErnieModel.from_pretrained(str(out)))
    for k, v in encoder.items():
        assert np.array_equal(v, source["ernie." + k]), k
    tok = ErnieTokenizer.from_pretrained(str(out))
    assert [tok.convert_ids_to_tokens(i) for i in range(len(VOCAB))] == VOCAB
    assert (out / "vocab.txt").read_bytes() == vocab_bytes
    assert manifest["source"]["vocab_sha256"] == hashlib.sha256(vocab_bytes).hexdigest()

    # the run's side: the directory is recognised, verified and loaded with the manifest's checksum
    src = W.resolve_model_dir(out)
    assert src.layout == "pretrained" and src.manifest_file == out / "MANIFEST.json"
    weights, report = W.load_starting_weights(src, {k: v.shape for k, v in source.items()})
    assert report.checksum == manifest["tensors"]["checksum"] == W.tensor_checksum(source)
    assert report.n_tensors == manifest["tensors"]["count"] == 46


def test_verify_manifest_catches_every_change(tmp_path, offline, tiny_builtin):
    cache = tmp_path / "models"
    make_cache(cache, tiny_builtin)
    out = tmp_path / "out"
    P.fetch_pretrained(NAME, out, cache_dir=cache, log=lambda m: None)
    shapes = {k: tuple(v.shape) for k, v in tiny_shapes(tiny_builtin).items()}

    weights = out / "model_state.pdparams"
    original = weights.read_bytes()
    changed = bytearray(original)
    changed[-5] ^= 0x01  # one bit, same size
    weights.write_bytes(bytes(changed))
    with pytest.raises(P.ManifestError) as exc:
        P.verify_manifest(out)
    assert f"{weights} has sha256" in str(exc.value) and "modified" in str(exc.value)
    with pytest.raises(W.WeightsError, match="model_state.pdparams has sha256"):
        W.load_starting_weights(W.resolve_model_dir(out), shapes)
    weights.write_bytes(original)
    P.verify_manifest(out)

    with open(out / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("extra\n")
    with pytest.raises(P.ManifestError, match=r"vocab.txt has \d+ bytes, MANIFEST.json says"):
        P.verify_manifest(out)
    (out / "vocab.txt").unlink()
    with pytest.raises(P.ManifestError, match="vocab.txt is listed in MANIFEST.json but missing"):
        P.verify_manifest(out)


def test_verify_manifest_refuses_unlisted_weights_and_a_missing_manifest(tmp_path, offline, tiny_builtin):
    cache = tmp_path / "models"
    make_cache(cache, tiny_builtin)
    out = tmp_path / "out"
    P.fetch_pretrained(NAME, out, cache_dir=cache, log=lambda m: None)
    (out / "README.md").write_text("notes are fine\n")
    P.verify_manifest(out)
    (out / "model.safetensors").write_bytes(b"\0" * 16)  # would be loaded before model_state.pdparams
    with pytest.raises(P.ManifestError, match="model.safetensors not listed in MANIFEST.json"):
        P.verify_manifest(out)
    (out / "MANIFEST.json").unlink()
    with pytest.raises(P.ManifestError, match="MANIFEST.json is missing"):
        P.verify_manifest(out)


def tiny_shapes(config):
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieForPretraining

    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
            return {k: v for k, v in ErnieForPretraining(ErnieConfig(**config)).state_dict().items()}
    finally:
        paddle.disable_static()


def test_source_without_heads_is_written_as_ernie_model(tmp_path, offline, tiny_builtin):
    cache = tmp_path / "models"
    source = make_cache(cache, tiny_builtin, heads=False)
    out = tmp_path / "out"
    manifest = P.fetch_pretrained(NAME, out, cache_dir=cache, log=lambda m: None)
    assert manifest["heads_in_source"] is False and manifest["model_class"] == "ErnieModel"
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["ErnieModel"]  # no random heads passed off as pretrained ones
    shapes = {k: tuple(v.shape) for k, v in tiny_shapes(tiny_builtin).items()}
    src = W.resolve_model_dir(out)
    with pytest.raises(W.WeightsError, match="pretraining head tensor.*allow_missing_heads"):
        W.load_starting_weights(src, shapes)
    weights, report = W.load_starting_weights(src, shapes, allow_missing_heads=True)
    assert report.fresh_heads and all(h.startswith("cls.") for h in report.fresh_heads)
    for k, v in source.items():
        assert np.array_equal(weights["ernie." + k], v), k


def test_a_directory_named_like_the_model_in_cwd_does_not_shadow_the_cache(tmp_path, offline, tiny_builtin,
                                                                          monkeypatch):
    """PaddleNLP checks os.path.isdir(name) before the built-in name: `--out ernie-1.0-base-zh` run again
    from the same directory must still read the cache, not the earlier output."""
    from paddlenlp.transformers import ErnieForPretraining

    cache = tmp_path / "models"
    make_cache(cache, tiny_builtin)
    monkeypatch.chdir(tmp_path)
    P.fetch_pretrained(NAME, NAME, cache_dir=cache, log=lambda m: None)  # relative --out
    newer = make_cache(cache, tiny_builtin, seed=12)  # the cache changes under ./ernie-1.0-base-zh's feet
    manifest = P.fetch_pretrained(NAME, NAME, cache_dir=cache, force=True, log=lambda m: None)
    assert manifest["source"]["weights_sha256"] == P.sha256_file(cache / NAME / "model_state.pdparams")
    got = loaded_state(ErnieForPretraining.from_pretrained(str(tmp_path / NAME)))
    assert all(np.array_equal(got[k], v) for k, v in newer.items())
    assert os.getcwd() == str(tmp_path)


def test_older_cache_file_name_is_used_offline(tmp_path, offline, tiny_builtin):
    """Releases before 2.8 cached the URL's name, which 2.8.1 does not look for (it would download)."""
    cache = tmp_path / "models"
    source = make_cache(cache, tiny_builtin, weights_name="ernie_v1_chn_base.pdparams")
    out = tmp_path / "out"
    manifest = P.fetch_pretrained(NAME, out, cache_dir=cache, log=lambda m: None)
    assert manifest["source"]["weights"] == str(cache / NAME / "ernie_v1_chn_base.pdparams")
    from paddlenlp.transformers import ErnieForPretraining

    got = loaded_state(ErnieForPretraining.from_pretrained(str(out)))
    assert all(np.array_equal(got[k], v) for k, v in source.items())


def test_empty_cache_fails_fast_and_names_the_cache(tmp_path, offline):
    cache = tmp_path / "models"
    out = tmp_path / "out"
    t0 = time.time()
    with pytest.raises(P.FetchError) as exc:
        P.fetch_pretrained(NAME, out, cache_dir=cache, log=lambda m: None)
    assert str(cache / NAME) in str(exc.value) and time.time() - t0 < 60
    assert not out.exists()


def test_unknown_name_and_existing_output(tmp_path, offline, tiny_builtin, capsys):
    assert P.main(["bert-base-uncased", "--out", str(tmp_path / "x")]) == P.EXIT_BAD_INPUT
    assert "not a PaddleNLP built-in ERNIE model" in capsys.readouterr().err
    cache = tmp_path / "models"
    make_cache(cache, tiny_builtin)
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("mine")
    with pytest.raises(P.FetchError, match="exists and is not empty"):
        P.fetch_pretrained(NAME, out, cache_dir=cache, log=lambda m: None)
    assert P.main([NAME, "--out", str(out), "--cache-dir", str(cache)]) == P.EXIT_FAILED
    assert P.main([NAME, "--out", str(out), "--cache-dir", str(cache), "--force"]) == P.EXIT_OK
    assert not (out / "something").exists()
    P.verify_manifest(out)


_CLI = r"""
import socket, sys
def blocked(*a, **k):
    raise OSError("network blocked by the test")
socket.socket.connect = blocked
socket.getaddrinfo = blocked
from paddlenlp.transformers.ernie.configuration import ERNIE_PRETRAINED_INIT_CONFIGURATION as C
C["ernie-1.0-base-zh"].update({tiny})
from ernie_cluster.pretrained import main
sys.exit(main(sys.argv[1:]))
"""


def test_cli_reads_ppnlp_home(tmp_path, tiny_builtin):
    """A fresh process finds the cache through PPNLP_HOME (paddlenlp reads it at import: <PPNLP_HOME>/models)."""
    home = tmp_path / "ppnlp_home"
    source = make_cache(home / "models", tiny_builtin)
    out = tmp_path / "out"
    env = dict(os.environ, PPNLP_HOME=str(home),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.run([sys.executable, "-c", _CLI.replace("{tiny}", repr(TINY)), NAME, "--out", str(out), "--json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(proc.stdout)
    assert manifest["source"]["weights"] == str(home / "models" / NAME / "model_state.pdparams")
    assert manifest["tensors"]["checksum"] == W.tensor_checksum(source)
    P.verify_manifest(out)


def test_manifest_names_are_one_object_whichever_module_they_come_from(tmp_path):
    """The manifest's home is ernie_cluster.weights.manifest; `pretrained` re-exports it, so an
    `except P.ManifestError` catches what the weights side raises."""
    from ernie_cluster.weights import manifest as M

    assert (P.ManifestError, P.verify_manifest, P.write_manifest) == (M.ManifestError, M.verify_manifest,
                                                                      M.write_manifest)
    assert (P.MANIFEST_KIND, P.MANIFEST_FORMAT) == (M.MANIFEST_KIND, M.MANIFEST_FORMAT)
    with pytest.raises(P.ManifestError, match="is missing"):
        M.verify_manifest(tmp_path)
