"""The corpus records its vocabulary (``vocab_sha256``) and the reader takes the reference's ``_idx.npz``.

* ``data_tools.vocab.vocab_sha256`` has the definition of ``ernie_cluster.weights.vocab_digest``;
* ``create_pretraining_data`` writes it (and the vocab's path) into ``<prefix>_idx.npz`` and its summary;
* a corpus written the way the newer reference tool writes it (no ``sents``, uint16/int32 ids, int32 lens)
  reads as the same corpus with ``sents``, sample for sample; an inconsistent one is refused naming the file.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_tools.create_pretraining_data import create_pretraining_data
from data_tools.dataset import DataError, IndexedDataset, build_pretraining_datasets, open_indexed
from data_tools.masking import MaskingConfig
from data_tools.synthetic import write_synthetic_indexed
from data_tools.toy_corpus import write_toy_corpus
from data_tools.vocab import CORPUS_VOCAB_FILE_KEY, CORPUS_VOCAB_KEY, load_vocab, vocab_sha256
from ernie_cluster import weights as W

SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab_toy")
    info = write_toy_corpus(str(root), docs=120, seed=3)
    prefix = str(root / "toy")
    summary = create_pretraining_data([info["corpus"]], info["vocab"], prefix, workers=1,
                                      cn_whole_word_segment=True, progress=False)
    return {"root": root, "vocab": info["vocab"], "corpus": info["corpus"], "prefix": prefix, "summary": summary}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic_indexed(str(tmp_path_factory.mktemp("vocab_synth")), n_docs=160, seed=5)


def _write_reference_layout(src_prefix: str, dst_prefix: str, ids_dtype=None) -> None:
    """What PaddleNLP's model_zoo/ernie-1.0 create_pretraining_data.py writes: ``np.save`` of the ids
    (uint16, or int32 for a vocab of 65535+), ``np.savez(lens=int32, docs=int64)`` and no ``sents``."""
    ids = np.load(src_prefix + "_ids.npy")
    with np.load(src_prefix + "_idx.npz") as z:
        lens, docs = z["lens"].astype(np.int32), z["docs"].astype(np.int64)
    np.save(dst_prefix + "_ids.npy", ids.astype(ids_dtype or ids.dtype))
    np.savez(dst_prefix + "_idx.npz", lens=lens, docs=docs)


# ---------------------------------------------------------------------------
# the digest


VOCAB_FILES = {
    "trailing_newline": "\n".join(SPECIALS + ["a", "##b", "中"]) + "\n",
    "no_trailing_newline": "\n".join(SPECIALS + ["a", "##b", "中"]),
    "crlf": "\r\n".join(SPECIALS + ["a", "##b", "中"]) + "\r\n",
    "blank_line_and_spaces": "\n".join(SPECIALS + ["", " x ", "\u3000", "中"]) + "\n",
    "bom": "\ufeff" + "\n".join(SPECIALS + ["a"]) + "\n",
    "other_order": "\n".join(SPECIALS + ["##b", "a", "中"]) + "\n",
}


@pytest.mark.parametrize("name", sorted(VOCAB_FILES))
def test_vocab_sha256_is_weights_vocab_digest(tmp_path, name):
    path = tmp_path / f"{name}.txt"
    path.write_bytes(VOCAB_FILES[name].encode("utf-8"))  # bytes: no newline translation on the way out
    digest = vocab_sha256(str(path))
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == W.vocab_digest(path)
    if name != "bom":  # the BOM sticks to "[PAD]" (as in paddlenlp), so load_vocab refuses that file
        assert digest == load_vocab(str(path)).sha256
    tokens = W.read_vocab_tokens(path)
    assert digest == hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()


def test_vocab_sha256_ignores_line_endings_but_not_tokens(tmp_path):
    digests = {}
    for name, text in VOCAB_FILES.items():
        (tmp_path / name).write_bytes(text.encode("utf-8"))
        digests[name] = vocab_sha256(str(tmp_path / name))
    assert digests["trailing_newline"] == digests["no_trailing_newline"] == digests["crlf"]
    assert len({digests["trailing_newline"], digests["other_order"], digests["bom"],
                digests["blank_line_and_spaces"]}) == 4


# ---------------------------------------------------------------------------
# the tool records it


def test_corpus_records_its_vocab(toy, tmp_path):
    digest = W.vocab_digest(Path(toy["vocab"]))
    with np.load(toy["prefix"] + "_idx.npz", allow_pickle=False) as z:
        assert z[CORPUS_VOCAB_KEY].shape == () and z[CORPUS_VOCAB_KEY].dtype.kind == "U"
        assert str(z[CORPUS_VOCAB_KEY]) == digest
        assert str(z[CORPUS_VOCAB_FILE_KEY]) == str(Path(toy["vocab"]).resolve())
        assert {"lens", "sents", "docs"} <= set(z.files)
    assert toy["summary"]["vocab_sha256"] == digest == vocab_sha256(toy["vocab"])
    assert toy["summary"]["vocab_file"] == str(Path(toy["vocab"]).resolve())
    ix = IndexedDataset(toy["prefix"])
    assert ix.vocab_sha256 == digest and ix.vocab_file == str(Path(toy["vocab"]).resolve())
    # the run side reads the same record
    assert W.CORPUS_VOCAB_KEY == CORPUS_VOCAB_KEY
    assert W.corpus_vocab_digest(Path(toy["prefix"] + "_idx.npz")) == digest
    check = W.check_vocab(None, vocab_file=toy["vocab"], corpus_prefix=toy["prefix"])
    assert check.sha256 == digest and check.corpora == [(toy["prefix"] + "_idx.npz", "match")]


def test_dataset_refuses_a_vocab_with_other_tokens(toy, tmp_path):
    # the same tokens in another file (CRLF, no trailing newline) are fine
    same = tmp_path / "same.txt"
    same.write_bytes("\r\n".join(Path(toy["vocab"]).read_text(encoding="utf-8").splitlines()).encode("utf-8"))
    assert vocab_sha256(str(same)) == toy["summary"]["vocab_sha256"]
    assert len(build_pretraining_datasets(toy["prefix"], str(same), "1", 64, seed=1)["train"]) > 0
    # two tokens swapped: the ids would mean other tokens
    lines = Path(toy["vocab"]).read_text(encoding="utf-8").splitlines()
    lines[10], lines[11] = lines[11], lines[10]
    other = tmp_path / "other.txt"
    other.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(toy["prefix"]) + ".*another vocab.*" + re.escape(toy["vocab"])):
        build_pretraining_datasets(toy["prefix"], str(other), "1", 64, seed=1)


def test_cli_reports_the_vocab(toy, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "data_tools.create_pretraining_data", "--input", toy["corpus"],
                        "--vocab-file", toy["vocab"], "--output-prefix", str(tmp_path / "c"), "--workers", "1"],
                       cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"sha256 {toy['summary']['vocab_sha256'][:12]}" in r.stderr


def test_unrecorded_corpora_still_load(synth, toy, tmp_path):
    ix = IndexedDataset(synth["prefix"])  # written with lens/sents/docs only, like corpora before the record
    assert ix.vocab_sha256 is None and ix.vocab_file is None and not ix.sents_derived
    assert W.check_vocab(None, vocab_file=synth["vocab"], corpus_prefix=synth["prefix"]).corpora == [
        (synth["prefix"] + "_idx.npz", "unrecorded")]
    # a directory mixing a recorded corpus and an unrecorded one of the same vocab
    d = tmp_path / "mixed"
    d.mkdir()
    for suf in ("_ids.npy", "_idx.npz"):
        shutil.copy(toy["prefix"] + suf, d / f"a{suf}")
    _write_reference_layout(toy["prefix"], str(d / "b"))
    joined = open_indexed(str(d))
    assert joined.vocab_sha256 == toy["summary"]["vocab_sha256"] and joined.n_docs == 2 * IndexedDataset(
        toy["prefix"]).n_docs
    # corpora of two different vocabs are refused, naming both files
    other = tmp_path / "two"
    other.mkdir()
    shutil.copy(toy["prefix"] + "_ids.npy", other / "a_ids.npy")
    shutil.copy(toy["prefix"] + "_idx.npz", other / "a_idx.npz")
    shutil.copy(toy["prefix"] + "_ids.npy", other / "b_ids.npy")
    with np.load(toy["prefix"] + "_idx.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays[CORPUS_VOCAB_KEY] = np.array("0" * 64)
    np.savez(other / "b_idx.npz", **arrays)
    with pytest.raises(DataError, match="different vocabs.*a_idx.npz.*b_idx.npz"):
        open_indexed(str(other))


# ---------------------------------------------------------------------------
# the reference layout (no sents)


def _samples(datasets, n=40):
    out = []
    for name in ("train", "valid"):
        ds = datasets[name]
        for i in list(range(n)) + [len(ds) + 3, 5 * len(ds) + 1]:  # also past the first epoch
            out.append((name, i, ds[i]))
    return out


@pytest.mark.parametrize("ids_dtype", [None, np.int32])
def test_reference_layout_without_sents_gives_the_same_samples(synth, tmp_path, ids_dtype):
    ref = str(tmp_path / "ref")
    _write_reference_layout(synth["prefix"], ref, ids_dtype)
    with np.load(ref + "_idx.npz") as z:
        assert sorted(z.files) == ["docs", "lens"] and z["lens"].dtype == np.int32
    a, b = IndexedDataset(synth["prefix"]), IndexedDataset(ref)
    assert b.sents_derived and not a.sents_derived
    assert b.sents.dtype == np.int64 and b.sents[0] == 0 and np.array_equal(a.sents, b.sents)
    assert b.ids.dtype == (np.dtype(ids_dtype) if ids_dtype else np.uint16)  # kept as written, not converted
    assert b.lens.dtype == np.int32 and np.array_equal(a.docs, b.docs)
    masking = MaskingConfig()
    da = build_pretraining_datasets(synth["prefix"], synth["vocab"], "90,10,0", 128, masking, seed=4,
                                    cache_dir=str(tmp_path / "cache_a"))
    db = build_pretraining_datasets(ref, synth["vocab"], "90,10,0", 128, masking, seed=4,
                                    cache_dir=str(tmp_path / "cache_b"))
    assert len(da["train"]) == len(db["train"]) and len(da["valid"]) == len(db["valid"])
    for (name, i, x), (_, _, y) in zip(_samples(da), _samples(db)):
        assert x.keys() == y.keys()
        for k in x:
            assert np.array_equal(np.asarray(x[k]), np.asarray(y[k])), (name, i, k)


def test_reference_layout_from_the_tool(toy, tmp_path):
    """The project's own corpus, rewritten the reference way, decodes to the same documents."""
    ref = str(tmp_path / "r")
    _write_reference_layout(toy["prefix"], ref)
    a, b = IndexedDataset(toy["prefix"]), IndexedDataset(ref)
    assert b.vocab_sha256 is None and b.n_docs == a.n_docs and b.n_tokens == a.n_tokens
    for d in (0, 1, a.n_docs // 2, a.n_docs - 1):
        assert all(np.array_equal(x, y) for x, y in zip(a.document(d), b.document(d)))


def _corrupt(src_prefix: str, dst_prefix: str, ids=None, **arrays) -> str:
    base_ids = np.load(src_prefix + "_ids.npy")
    with np.load(src_prefix + "_idx.npz") as z:
        idx = {"lens": z["lens"], "docs": z["docs"]}
    idx.update(arrays)
    np.save(dst_prefix + "_ids.npy", base_ids if ids is None else ids)
    np.savez(dst_prefix + "_idx.npz", **{k: v for k, v in idx.items() if v is not None})
    return dst_prefix + "_idx.npz"


def test_inconsistent_reference_layout_is_refused_naming_the_file(synth, tmp_path):
    ids = np.load(synth["prefix"] + "_ids.npy")
    with np.load(synth["prefix"] + "_idx.npz") as z:
        lens, docs, sents = z["lens"], z["docs"], z["sents"]
    cases = {
        # ids and idx of different corpora: lens add up to more tokens than the ids file has
        "short_ids": (dict(ids=ids[:-5]), r"lens\) add up to \d+ tokens but the ids file holds"),
        "docs_end": (dict(docs=np.concatenate([docs[:-1], [docs[-1] - 1]])), r"docs must run from 0 .*len\(lens\)"),
        "docs_start": (dict(docs=docs + 1), "docs must run from 0"),
        "docs_decrease": (dict(docs=np.concatenate([[0, 5, 3], docs[3:]])), "decrease"),
        "negative_len": (dict(lens=np.concatenate([[-1, lens[0] + lens[1] + 1], lens[2:]]).astype(np.int32)),
                         "negative sentence length"),
        "float_lens": (dict(lens=lens.astype(np.float32)), "integer"),
        "no_lens": (dict(lens=None), r"lacks array\(s\) \['lens'\]"),
        # a stored sents that disagrees with lens
        "sents_vs_lens": (dict(sents=np.concatenate([[0, sents[1] + 1], sents[2:]])), "sentence 0 has length"),
        "sents_short": (dict(sents=sents[:-1]), "sents entries"),
    }
    for name, (kw, why) in cases.items():
        idx_path = _corrupt(synth["prefix"], str(tmp_path / name), **kw)
        with pytest.raises(DataError, match=re.escape(idx_path) + ".*" + why):
            IndexedDataset(str(tmp_path / name))
    (tmp_path / "junk_idx.npz").write_bytes(b"not a zip")
    np.save(tmp_path / "junk_ids.npy", ids)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "junk_idx.npz"))):
        IndexedDataset(str(tmp_path / "junk"))
    # a consistent reference corpus with 0 documents loads (the reference writes docs=[0] then)
    _corrupt(synth["prefix"], str(tmp_path / "empty"), ids=ids[:0], lens=np.zeros(0, np.int32),
             docs=np.zeros(1, np.int64))
    assert IndexedDataset(str(tmp_path / "empty")).n_docs == 0
