"""Issue #11: representative train/valid/test splits, and documents that never vanish silently."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_tools.create_pretraining_data import _SENT_SPLIT_RE, create_pretraining_data
from data_tools.dataset import (DataError, IndexedDataset, build_pretraining_datasets, split_doc_ranges,
                                split_documents)
from data_tools.mapping import (build_mapping, build_mapping_for_docs, build_mapping_py, count_skipped_documents,
                                helpers_available)
from data_tools.masking import MaskingConfig
from data_tools.synthetic import write_synthetic_indexed
from data_tools.toy_corpus import generate_documents, write_toy_corpus
from ernie_cluster.rundir import RunDir
from ernie_cluster.spec import JobSpec

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
N_CHARS = 3000  # write_synthetic_indexed's default: plain chars 5..3004, their ## forms +3000


def _topic_of(ids: np.ndarray) -> np.ndarray:
    """0 for topic A (char 0..1499), 1 for topic B (1500..2999), per token."""
    base = np.where(ids < 5 + N_CHARS, ids, ids - N_CHARS).astype(np.int64) - 5
    return (base >= N_CHARS // 2).astype(np.int64)


@pytest.fixture(scope="module")
def sorted_corpus(tmp_path_factory):
    """400 documents sorted by topic: the first half uses only topic-A characters, the second only topic B."""
    root = tmp_path_factory.mktemp("sorted")
    s = write_synthetic_indexed(str(root), n_docs=400, seed=5, n_chars=N_CHARS)
    ix = IndexedDataset(s["prefix"])
    ids = np.asarray(ix.ids).astype(np.int64)
    plain = ids < 5 + N_CHARS
    base = np.where(plain, ids, ids - N_CHARS) - 5
    tok_doc = np.repeat(np.arange(ix.n_docs), np.diff(ix.sents[ix.docs]))
    base = base % (N_CHARS // 2) + np.where(tok_doc >= ix.n_docs // 2, N_CHARS // 2, 0)
    ids = np.where(plain, 5 + base, 5 + base + N_CHARS).astype(np.uint16)
    del ix
    np.save(s["prefix"] + "_ids.npy", ids)
    return s


def _split_docs(ds) -> np.ndarray:
    return np.unique(np.asarray(ds.mapping[:, 0]))


# ---------------------------------------------------------------------------
# 1. splits


def test_sorted_corpus_gets_both_topics_in_validation(sorted_corpus, tmp_path):
    s = sorted_corpus
    out = build_pretraining_datasets(s["prefix"], s["vocab"], "80,20,0", 128, seed=1234, cache_dir=str(tmp_path))
    valid = out["valid"]
    docs = _split_docs(valid)
    half = 200
    in_a, in_b = int((docs < half).sum()), int((docs >= half).sum())
    assert in_a >= 20 and in_b >= 20, (in_a, in_b)
    assert valid.n_docs == 80 and len(docs) == 80  # as many documents as the contiguous split had
    # the tokens the samples are made of come from both topics too
    ix = valid.indexed
    topics = set()
    for i in range(len(valid)):
        _, s0, s1, _ = valid.row(i)
        topics |= set(_topic_of(np.asarray(ix.ids[ix.sents[s0]:ix.sents[s1]])).tolist())
    assert topics == {0, 1}
    assert not set(docs.tolist()) & set(_split_docs(out["train"]).tolist())
    # the old contiguous split (a run that began with it) puts only topic B into validation
    old = build_pretraining_datasets(s["prefix"], s["vocab"], "80,20,0", 128, seed=1234, cache_dir=str(tmp_path),
                                     shuffle_documents=False)
    assert _split_docs(old["valid"]).min() >= 320 and old["valid"].doc_range == (320, 400)
    # the two schemes never share a cache file
    new_files = {Path(valid.mapping_path).name, Path(out["train"].mapping_path).name}
    old_files = {Path(old["valid"].mapping_path).name, Path(old["train"].mapping_path).name}
    assert not new_files & old_files
    assert all("_docindex_mapping_" in f for f in new_files)
    assert all("_docindex_" not in f for f in old_files)


def test_a_directory_of_two_corpora_gives_validation_from_both(sorted_corpus, tmp_path):
    whole = IndexedDataset(sorted_corpus["prefix"])
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    cut = 250  # unequal parts: the second one would hold all of a contiguous valid split
    for name, (d0, d1) in {"a_news": (0, cut), "b_web": (cut, whole.n_docs)}.items():
        s0, s1 = int(whole.docs[d0]), int(whole.docs[d1])
        t0, t1 = int(whole.sents[s0]), int(whole.sents[s1])
        np.save(corpora / f"{name}_ids.npy", np.asarray(whole.ids[t0:t1]))
        np.savez(corpora / f"{name}_idx.npz", lens=whole.lens[s0:s1],
                 sents=np.asarray(whole.sents[s0:s1 + 1]) - t0, docs=np.asarray(whole.docs[d0:d1 + 1]) - s0)
    out = build_pretraining_datasets(str(corpora), sorted_corpus["vocab"], "90,10,0", 128, seed=7,
                                     cache_dir=str(tmp_path / "cache"))
    docs = _split_docs(out["valid"])
    assert (docs < cut).sum() >= 10 and (docs >= cut).sum() >= 5, docs
    old = build_pretraining_datasets(str(corpora), sorted_corpus["vocab"], "90,10,0", 128, seed=7,
                                     shuffle_documents=False)
    assert _split_docs(old["valid"]).min() >= cut  # before: the last corpus only


def test_split_documents_partition_and_sizes():
    for n, split in ((1000, "949,50,1"), (7, "1,1,1"), (10, "1"), (5, "949,50,1"), (1, "1"), (0, "1"),
                     (100, "0,1,0")):
        parts = split_documents(n, split, seed=3)
        ranges = split_doc_ranges(n, split)
        assert [len(parts[k]) for k in ranges] == [hi - lo for lo, hi in ranges.values()]
        allv = np.concatenate(list(parts.values()))
        assert np.array_equal(np.sort(allv), np.arange(n))
        assert all(np.all(np.diff(p) > 0) for p in parts.values())
        old = split_documents(n, split, seed=3, shuffle=False)
        assert all(np.array_equal(old[k], np.arange(*ranges[k])) for k in ranges)
    usable = np.ones(1000, dtype=bool)
    usable[::3] = False
    u = split_documents(1000, "949,50,1", 3, usable=usable)
    assert usable[u["valid"]].all() and usable[u["test"]].all() and len(u["valid"]) == 50
    few = np.zeros(1000, dtype=bool)
    few[[10, 500, 990]] = True  # fewer usable documents than valid + test need: they go first, then the rest
    f = split_documents(1000, "949,50,1", 3, usable=few)
    assert set(f["valid"].tolist()) >= {10, 500, 990} and len(f["valid"]) == 50 and len(f["test"]) == 1
    a, b = split_documents(1000, "949,50,1", 3), split_documents(1000, "949,50,1", 4)
    assert not np.array_equal(a["valid"], b["valid"])  # the seed (train.seed) chooses
    assert np.array_equal(a["valid"], split_documents(1000, "949,50,1", 3)["valid"])


def test_contiguous_cache_names_are_unchanged_and_index_names_differ():
    from data_tools.mapping import mapping_cache_name

    args = ("/x/p", "train", "949,50,1", (0, 949), 512, 0.1, 1234, True, 1000, 50000)
    assert mapping_cache_name(*args) == "p_train_mapping_6e6eb58c07bb9cf5fe3b"  # the name before issue #11
    new = mapping_cache_name(*args[:3], None, *args[4:], doc_index=(949, "0" * 20))
    assert new.startswith("p_train_docindex_mapping_")


_CHILD = r"""
import hashlib, json, sys
import numpy as np
from data_tools.dataset import build_pretraining_datasets, split_documents
prefix, vocab = sys.argv[1], sys.argv[2]
parts = split_documents(123457, "949,50,1", 1234)
out = build_pretraining_datasets(prefix, vocab, "80,20,0", 128, seed=1234)
print(json.dumps({"parts": {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in parts.items()},
                  "rows": {k: hashlib.sha256(np.ascontiguousarray(out[k].mapping).tobytes()).hexdigest()
                           for k in ("train", "valid")},
                  "sample": out["valid"][3]["input_ids"].tolist()}))
"""


def test_assignment_is_identical_across_processes_and_resume(sorted_corpus, tmp_path):
    import hashlib

    s = sorted_corpus
    r = subprocess.run([PY, "-c", _CHILD, s["prefix"], s["vocab"]], cwd=REPO, capture_output=True, text=True,
                       env={"PYTHONHASHSEED": "random", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    child = json.loads(r.stdout)
    parts = split_documents(123457, "949,50,1", 1234)
    assert child["parts"] == {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in parts.items()}
    # the launcher builds the cache, a resumed trainer (another process, later) only reads it
    built = build_pretraining_datasets(s["prefix"], s["vocab"], "80,20,0", 128, seed=1234, cache_dir=str(tmp_path))
    resumed = build_pretraining_datasets(s["prefix"], s["vocab"], "80,20,0", 128, seed=1234, cache_dir=str(tmp_path),
                                         is_builder=False, timeout_s=5)
    for k in ("train", "valid"):
        digest = hashlib.sha256(np.ascontiguousarray(built[k].mapping).tobytes()).hexdigest()
        assert child["rows"][k] == digest
        assert resumed[k].mapping_path == built[k].mapping_path
        assert np.array_equal(resumed[k].mapping, built[k].mapping)
        assert resumed[k].dropped == built[k].dropped
    assert child["sample"] == built["valid"][3]["input_ids"].tolist()


@pytest.mark.parametrize("binary_head", [True, False])
@pytest.mark.parametrize("ssp", [0.0, 0.1, 1.0])
def test_cpp_and_python_mappings_agree_on_shuffled_splits(tmp_path_factory, binary_head, ssp):
    if not helpers_available():
        pytest.skip("data_tools._helpers not compiled (pip install -e .)")
    s = write_synthetic_indexed(str(tmp_path_factory.mktemp("mix")), n_docs=300, seed=9, sents_per_doc=(1, 12),
                                long_sentence_docs=9)
    ix = IndexedDataset(s["prefix"])
    full, _ = build_mapping(ix.docs, ix.lens, 0, 300, 125, ssp, 42, binary_head, use_cpp=True)
    for name, idx in split_documents(300, "70,20,10", seed=42).items():
        a, sa = build_mapping_for_docs(ix.docs, ix.lens, idx, 125, ssp, 42, binary_head, use_cpp=True)
        b, sb = build_mapping_for_docs(ix.docs, ix.lens, idx, 125, ssp, 42, binary_head, use_cpp=False)
        assert a.dtype == b.dtype == np.int32 and np.array_equal(a, b) and sa == sb, name
        # a document gives the same rows in any split: the whole corpus' rows of the split's documents
        assert np.array_equal(a, full[np.isin(full[:, 0], idx)]), name
        assert sa == count_skipped_documents(ix.docs, ix.lens, idx, binary_head)
        assert np.all(ix.docs[a[:, 0]] <= a[:, 1]) and np.all(a[:, 2] <= ix.docs[a[:, 0] + 1])
    lo, hi = 40, 260  # a contiguous index is the old range, exactly
    c, sc = build_mapping_for_docs(ix.docs, ix.lens, np.arange(lo, hi), 125, ssp, 42, binary_head)
    d, sd = build_mapping_py(ix.docs, ix.lens, lo, hi, 125, ssp, 42, binary_head)
    assert np.array_equal(c, d) and sc == sd
    with pytest.raises(ValueError, match="strictly increasing"):
        build_mapping_for_docs(ix.docs, ix.lens, np.array([5, 3]), 125, ssp, 42, binary_head)


# ---------------------------------------------------------------------------
# 2. documents never vanish silently


def _one_sentence(text: str) -> bool:
    return len([p for p in _SENT_SPLIT_RE.split(text) if p.strip()]) == 1


@pytest.fixture(scope="module")
def toy_vocab(tmp_path_factory):
    return write_toy_corpus(str(tmp_path_factory.mktemp("vocab")), docs=2, seed=1)["vocab"]


def test_single_line_jsonl_documents_are_split_into_sentences(toy_vocab, tmp_path):
    docs = [d for d in generate_documents(60, 3) if len(d) >= 2]
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": "".join(d)}, ensure_ascii=False) + "\n" for d in docs),
                   encoding="utf-8")
    summary = create_pretraining_data([str(raw)], toy_vocab, str(tmp_path / "c"), workers=2, progress=False)
    ix = IndexedDataset(str(tmp_path / "c"))
    pieces = [len([p for p in _SENT_SPLIT_RE.split("".join(d)) if p.strip()]) for d in docs]
    assert ix.n_docs == len(docs) and np.array_equal(np.diff(ix.docs), pieces) and min(pieces) >= 2
    assert summary["single_sentence_documents"] == 0
    out = build_pretraining_datasets(str(tmp_path / "c"), toy_vocab, "1", 64, seed=1)
    train = out["train"]
    assert set(np.asarray(train.mapping[:, 0]).tolist()) == set(range(len(docs)))  # every document is used
    assert train.dropped["too_few_sentences"] == 0
    labels = [train[i]["next_sentence_label"] for i in range(len(train))]
    assert set(labels) == {0, 1}  # sentence-order samples, both orders
    assert all(train[i]["token_type_ids"].any() for i in range(len(train)))
    # newlines only (the former default): one sentence each, and nothing to train on with binary_head
    create_pretraining_data([str(raw)], toy_vocab, str(tmp_path / "n"), workers=1, split_sentences="none",
                            progress=False)
    assert np.all(np.diff(IndexedDataset(str(tmp_path / "n")).docs) == 1)
    with pytest.raises(DataError, match="yields no samples"):
        build_pretraining_datasets(str(tmp_path / "n"), toy_vocab, "1", 64, seed=1)
    # raw text keeps one sentence per line under auto; --split-sentences (bare) = all splits it too
    txt = tmp_path / "raw.txt"
    txt.write_text("".join("".join(d) + "\n\n" for d in docs), encoding="utf-8")
    create_pretraining_data([str(txt)], toy_vocab, str(tmp_path / "t"), workers=1, progress=False)
    assert np.all(np.diff(IndexedDataset(str(tmp_path / "t")).docs) == 1)
    r = subprocess.run([PY, "-m", "data_tools.create_pretraining_data", "--input", str(txt), "--vocab-file",
                        toy_vocab, "--output-prefix", str(tmp_path / "a"), "--split-sentences", "--workers", "1"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(IndexedDataset(str(tmp_path / "a")).docs, ix.docs)


def _spec(tmp_path: Path, raw: Path, vocab: str, **data) -> JobSpec:
    return JobSpec.model_validate({
        "name": "drops", "output_dir": str(tmp_path / "run"),
        "cluster": {"backend": "local"},
        "data": {"input_prefix": str(tmp_path / "corpus" / "c"), "raw_corpus": str(raw), "vocab_file": vocab,
                 "split": "90,10,0", **data},
        "train": {"device": "cpu", "max_steps": 5, "max_seq_len": 64, "seed": 1234},
    })


def test_one_sentence_documents_are_reported_in_the_logs_and_status(toy_vocab, tmp_path, caplog):
    from ernie_cluster.launch.prepare import prepare_data
    from ernie_cluster.train.data import DATA_REPORT, open_datasets

    multi = [d for d in generate_documents(80, 5) if len(d) >= 3]
    singles = [x for d in generate_documents(40, 6) for x in d if _one_sentence(x)][:25]
    order = np.random.default_rng(0).permutation(len(multi) + len(singles))
    texts = ["".join(multi[k]) if k < len(multi) else singles[k - len(multi)] for k in order]
    one = {i for i, k in enumerate(order) if k >= len(multi)}
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    spec = _spec(tmp_path, raw, toy_vocab)
    run = RunDir(tmp_path / "run")
    lines: list = []
    prepare_data(spec, run, log=lines.append)
    # the shuffle keeps the unusable documents in train while valid can be filled with usable ones
    usable = np.array([i not in one for i in range(len(texts))])
    parts = split_documents(len(texts), "90,10,0", 1234, usable=usable)
    expect = {k: len(one & set(parts[k].tolist())) for k in ("train", "valid")}
    assert expect == {"train": 25, "valid": 0}
    log_text = "\n".join(lines)
    assert "note: 25 of %d documents have a single sentence" % len(texts) in log_text  # the tokenizer's output
    assert (f"WARNING: split 'train': 25 of {len(parts['train'])} documents dropped: 25 with fewer than 2 "
            f"sentences") in log_text, log_text
    assert "WARNING: split 'valid'" not in log_text
    report = json.loads((run.data_cache / DATA_REPORT).read_text())
    assert report["dropped_documents"] == 25
    assert {k: v["too_few_sentences"] for k, v in report["splits"].items()} == expect
    # per split, with the old contiguous splits (data.shuffle_documents: false), where both hold some
    old_spec = spec.model_copy(update={"data": spec.data.model_copy(update={"shuffle_documents": False})})
    old_lines: list = []
    open_datasets(old_spec, tmp_path / "old_cache", is_builder=True, warn=old_lines.append)
    ranges = split_doc_ranges(len(texts), "90,10,0")
    for k in ("train", "valid"):
        n = len(one & set(range(*ranges[k])))
        assert n and any(line.startswith(f"split '{k}': {n} of {ranges[k][1] - ranges[k][0]} documents dropped")
                         for line in old_lines), old_lines
    # the trainer (rank 0) reads the maps the launcher built and warns in its own log
    with caplog.at_level(logging.WARNING, logger="ernie_cluster.train"):
        open_datasets(spec, run.data_cache, is_builder=True)
    warned = [r.getMessage() for r in caplog.records if r.name == "ernie_cluster.train"]
    assert any("split 'train': 25 of" in m for m in warned), warned
    # status: one warning line, and the whole report in --json
    run.write_state({"name": "drops", "backend": "local", "supervisor_pid": None, "local_state": "COMPLETED"})
    r = subprocess.run([PY, "-m", "ernie_cluster", "status", str(run.root), "--json"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)["data"]
    assert data["dropped_documents"] == 25 and data["splits"]["train"]["too_few_sentences"] == 25
    assert any("fewer than 2 sentences" in w for w in data["warnings"])
    r = subprocess.run([PY, "-m", "ernie_cluster", "status", str(run.root)], cwd=REPO, capture_output=True,
                       text=True, env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    warn = [line for line in r.stdout.splitlines() if "WARNING" in line]
    assert len(warn) == 1 and "25 of" in warn[0], r.stdout


def test_no_report_line_without_drops_and_shuffle_switch(toy_vocab, tmp_path):
    from ernie_cluster.train.data import DATA_REPORT, open_datasets

    docs = [d for d in generate_documents(60, 8) if len(d) >= 2]
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": "\n".join(d)}, ensure_ascii=False) + "\n" for d in docs),
                   encoding="utf-8")
    create_pretraining_data([str(raw)], toy_vocab, str(tmp_path / "corpus" / "c"), workers=1, progress=False)
    spec = _spec(tmp_path, raw, toy_vocab)
    got = open_datasets(spec, tmp_path / "cache", is_builder=True)
    report = json.loads((tmp_path / "cache" / DATA_REPORT).read_text())
    assert report["dropped_documents"] == 0 and report["summary"] is None and report["warnings"] == []
    assert got["valid"].doc_range is None and report["shuffle_documents"] is True
    # data.shuffle_documents: false (read with a default until the spec has the field) = the old ranges
    old_spec = spec.model_copy(update={"data": spec.data.model_copy(update={"shuffle_documents": False})})
    old = open_datasets(old_spec, tmp_path / "cache", is_builder=True)
    n = len(docs)
    assert old["valid"].doc_range == (split_doc_ranges(n, "90,10,0")["valid"])
    assert old["valid"].mapping_path != got["valid"].mapping_path
