"""Tests of data_tools: corpus -> ids -> sample mapping -> masked, fixed-shape batches."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_tools.create_pretraining_data import InputError, create_pretraining_data
from data_tools.dataset import (DataError, ErnieDataset, IndexedDataset, build_pretraining_datasets, parse_split,
                                split_doc_ranges)
from data_tools.loader import PretrainingBatches, collate
from data_tools.mapping import (MappingBuildError, build_mapping, build_mapping_py, get_or_build_mapping,
                                helpers_available)
from data_tools.masking import (MaskingConfig, MaskingTables, _Spans, create_masked_lm_predictions,
                                mask_sequence, truncated_lengths)
from data_tools.synthetic import write_synthetic_indexed
from data_tools.tokenizer import FastWordPieceTokenizer, whole_word_flags
from data_tools.toy_corpus import generate_documents, write_toy_corpus
from data_tools.vocab import VocabError, load_vocab

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


# ---------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """400-document toy corpus tokenized with whole-word marks (1 worker)."""
    root = tmp_path_factory.mktemp("toy")
    info = write_toy_corpus(str(root), docs=400, seed=7)
    prefix = str(root / "toy")
    summary = create_pretraining_data([info["corpus"]], info["vocab"], prefix, workers=1,
                                      cn_whole_word_segment=True, progress=False)
    return {"root": root, "corpus": info["corpus"], "vocab": info["vocab"], "prefix": prefix, "summary": summary}


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return write_synthetic_indexed(str(root), n_docs=300, seed=3)


@pytest.fixture(scope="session")
def synth_datasets(synth, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return build_pretraining_datasets(synth["prefix"], synth["vocab"], "90,8,2", 128, MaskingConfig(), seed=11,
                                      cache_dir=str(cache), is_builder=True)


def _decode(vocab, ids):
    return "".join(vocab.tokens[int(i)].replace("##", "", 1) if vocab.tokens[int(i)].startswith("##")
                   else vocab.tokens[int(i)] for i in ids)


# ---------------------------------------------------------------------------
# toy corpus + corpus -> ids


def test_toy_corpus_deterministic_and_vocab_layout(tmp_path):
    a = write_toy_corpus(str(tmp_path / "a"), docs=50, seed=5)
    b = write_toy_corpus(str(tmp_path / "b"), docs=50, seed=5)
    assert Path(a["corpus"]).read_bytes() == Path(b["corpus"]).read_bytes()
    assert generate_documents(50, 5) != generate_documents(50, 6)
    toks = Path(a["vocab"]).read_text(encoding="utf-8").splitlines()
    assert toks[:5] == ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"]
    assert 300 <= len(toks) <= 1200 and len(set(toks)) == len(toks)
    assert any(t.startswith("##") and "\u4e00" <= t[2] <= "\u9fa5" for t in toks)
    r = subprocess.run([PY, "-m", "data_tools.toy_corpus", "--out-dir", str(tmp_path / "c"), "--docs", "50",
                        "--seed", "5"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "c" / "corpus.txt").read_bytes() == Path(a["corpus"]).read_bytes()


def test_ids_layout_and_cumsums(toy):
    ids = np.load(toy["prefix"] + "_ids.npy", mmap_mode="r")
    z = np.load(toy["prefix"] + "_idx.npz")
    assert ids.dtype == np.uint16
    assert z["lens"].dtype == np.int32 and z["sents"].dtype == np.int64 and z["docs"].dtype == np.int64
    lens, sents, docs = z["lens"], z["sents"], z["docs"]
    assert sents[0] == 0 and np.array_equal(np.diff(sents), lens) and sents[-1] == ids.shape[0]
    assert docs[0] == 0 and docs[-1] == lens.shape[0] and np.all(np.diff(docs) > 0)
    assert docs.shape[0] - 1 == 400 == toy["summary"]["documents"]
    assert lens.min() > 0


def test_ids_decode_back_to_text(toy):
    vocab = load_vocab(toy["vocab"])
    ix = IndexedDataset(toy["prefix"])
    docs = generate_documents(400, 7)
    for d in (0, 1, 57, 399):
        for s_ids, text in zip(ix.document(d), docs[d]):
            assert _decode(vocab, s_ids) == "".join(text.lower().split())
    assert ix.n_docs == 400 and ix.n_sentences == sum(len(d) for d in docs)


def test_whole_word_marks_follow_jieba(toy):
    import jieba

    vocab = load_vocab(toy["vocab"])
    ix = IndexedDataset(toy["prefix"])
    text = generate_documents(400, 7)[3][0]
    toks = [vocab.tokens[int(i)] for i in ix.document(3)[0]]
    expected = []
    for w in jieba.lcut(text):
        cjk = [c for c in w if "\u4e00" <= c <= "\u9fa5"]
        if not cjk:
            continue
        whole = len(cjk) == len(w) and 2 <= len(w) <= 4
        expected += [c if (i == 0 or not whole) else "##" + c for i, c in enumerate(cjk)]
    assert [t for t in toks if "\u4e00" <= t[-1] <= "\u9fa5"] == expected
    assert any(t.startswith("##") for t in toks)


def test_whole_word_flags_rules():
    assert whole_word_flags(["研究", "人员", "的", "机器学习", "自然语言处理", "T恤", "abc", " "]) == [
        False, True, False, True, False, False, True, True, True] + [False] * 6 + [False]


def test_workers_jsonl_splited_and_extension(toy, tmp_path):
    docs = generate_documents(400, 7)
    # same bytes with 2 workers
    p2 = str(tmp_path / "w2")
    create_pretraining_data([toy["corpus"]], toy["vocab"], p2, workers=2, cn_whole_word_segment=True,
                            progress=False)
    for suf in ("_ids.npy", "_idx.npz"):
        a, b = np.load(toy["prefix"] + suf), np.load(p2 + suf)
        if suf == "_ids.npy":
            assert np.array_equal(a, b)
        else:
            assert all(np.array_equal(a[k], b[k]) for k in ("lens", "sents", "docs"))
    # jsonl input in a directory gives the same ids
    d = tmp_path / "jsonl"
    d.mkdir()
    (d / "part.jsonl").write_text("".join(json.dumps({"body": "\n".join(x)}, ensure_ascii=False) + "\n"
                                          for x in docs), encoding="utf-8")
    pj = str(tmp_path / "j")
    create_pretraining_data([str(d)], toy["vocab"], pj, workers=1, json_key="body", cn_whole_word_segment=True,
                            progress=False)
    assert np.array_equal(np.load(pj + "_ids.npy"), np.load(toy["prefix"] + "_ids.npy"))
    # pre-segmented text: marks follow the given separators
    seg = tmp_path / "seg.txt"
    seg.write_text("研究 人员 开发 技术\n\n我们 使用 数据\n", encoding="utf-8")
    ps = str(tmp_path / "s")
    create_pretraining_data([str(seg)], toy["vocab"], ps, workers=1, cn_whole_word_segment=True, cn_splited=True,
                            cn_split_dimer=" ", append_eos=True, progress=False)
    v = load_vocab(toy["vocab"])
    toks = [v.tokens[i] for i in np.load(ps + "_ids.npy")]
    assert toks == ["研", "##究", "人", "##员", "开", "##发", "技", "##术", "[SEP]", "我", "##们", "使", "##用",
                    "数", "##据", "[SEP]"]
    # a vocab without ##CJK: extension ids above the vocab, mapped back to the character by the dataset
    base = [t for t in Path(toy["vocab"]).read_text(encoding="utf-8").splitlines()
            if not (t.startswith("##") and "\u4e00" <= t[2:3] <= "\u9fa5")]
    vfile = tmp_path / "vocab_noext.txt"
    vfile.write_text("\n".join(base) + "\n", encoding="utf-8")
    pe = str(tmp_path / "e")
    create_pretraining_data([str(seg)], str(vfile), pe, workers=1, cn_whole_word_segment=True, cn_splited=True,
                            progress=False)
    ve = load_vocab(str(vfile))
    ids = np.load(pe + "_ids.npy")
    assert ids.max() >= ve.base_size and ve.tokens[int(ids[1])] == "##究"
    tables = MaskingTables(ve, to_chinese_char=False)
    assert ve.tokens[int(tables.input_map[ids[1]])] == "究" and tables.input_map.max() < ve.base_size


def test_tokenizer_matches_paddlenlp(toy):
    pytest.importorskip("paddlenlp")
    import zlib  # noqa: F401  paddle 2.6 import-order bug: zlib/numpy before paddle

    from paddlenlp.transformers import ErnieTokenizer

    ref = ErnieTokenizer(vocab_file=toy["vocab"])
    fast = FastWordPieceTokenizer(toy["vocab"])
    texts = [s for d in generate_documents(200, 1) for s in d] + [
        "Héllo WÖRLD! naïve café ﬁ ÅΩ ΑΣ.", "tab\there\x00nul\ufffd \u2028x\u2029y", "数字123abc，“引号”（括号）…… ©®™ ²³ µ",
        "豈 𠀀 ｆｕｌｌ １２３ İstanbul ß", "a" * 120, "  many   spaces\u3000\u00a0 ", "emoji 😀 𝔘", "[MASK] x [CLS]"]
    for t in texts:
        assert fast.encode(t) == ref.convert_tokens_to_ids(ref.tokenize(t)), t


def test_training_side_imports_stay_light():
    code = ("import sys, data_tools.dataset, data_tools.masking, data_tools.loader, data_tools.mapping; "
            "bad = [m for m in ('paddle', 'paddlenlp', 'jieba', 'tqdm') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_cli_runs_on_a_directory(tmp_path):
    info = write_toy_corpus(str(tmp_path / "in"), docs=40, seed=2, fmt="jsonl")
    r = subprocess.run([PY, "-m", "data_tools.create_pretraining_data", "--input", str(tmp_path / "in"),
                        "--vocab-file", info["vocab"], "--output-prefix", str(tmp_path / "out" / "p"), "--chinese",
                        "--cn-whole-word-segment", "--workers", "2"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "40 documents" in r.stderr
    assert IndexedDataset(str(tmp_path / "out" / "p")).n_docs == 40
    assert sorted(os.listdir(tmp_path / "out")) == ["p_ids.npy", "p_idx.npz"]


def test_cli_errors_are_clear(toy, tmp_path):
    r = subprocess.run([PY, "-m", "data_tools.create_pretraining_data", "--input", toy["corpus"], "--vocab-file",
                        str(tmp_path / "nope.txt"), "--output-prefix", str(tmp_path / "x")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "vocab file not found" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(InputError, match="input not found"):
        create_pretraining_data([str(tmp_path / "missing.txt")], toy["vocab"], str(tmp_path / "x"), progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(InputError, match="no non-empty documents"):
        create_pretraining_data([str(empty)], toy["vocab"], str(tmp_path / "x"), progress=False)
    assert not list(tmp_path.glob("x*"))  # nothing half-written
    bad_vocab = tmp_path / "v.txt"
    bad_vocab.write_text("a\nb\n")
    with pytest.raises(VocabError, match="lacks special token"):
        load_vocab(str(bad_vocab))
    with pytest.raises(FileNotFoundError, match="create_pretraining_data"):
        IndexedDataset(str(tmp_path / "nothing"))


def test_too_small_corpus_errors(toy, tmp_path):
    d = tmp_path / "small"
    info = write_toy_corpus(str(d), docs=5, seed=1)
    create_pretraining_data([info["corpus"]], info["vocab"], str(d / "s"), workers=1, progress=False)
    with pytest.raises(DataError, match=r"split 'valid' has 0 documents.*use more documents or change split"):
        build_pretraining_datasets(str(d / "s"), info["vocab"], "949,50,1", 64, seed=1)
    out = build_pretraining_datasets(str(d / "s"), info["vocab"], "100,0,0", 64, seed=1)
    assert out["valid"] is None and out["test"] is None and len(out["train"]) > 0
    one = tmp_path / "one.txt"
    one.write_text("只有一句话。\n\n还是一句话。\n", encoding="utf-8")
    create_pretraining_data([str(one)], info["vocab"], str(d / "o"), workers=1, progress=False)
    with pytest.raises(DataError, match="yields no samples.*fewer than 2 sentences"):
        build_pretraining_datasets(str(d / "o"), info["vocab"], "1", 64, seed=1)
    assert len(build_pretraining_datasets(str(d / "o"), info["vocab"], "1", 64,
                                          MaskingConfig(binary_head=False), seed=1)["train"]) == 2
    tiny_vocab = tmp_path / "tiny_vocab.txt"
    tiny_vocab.write_text("[PAD]\n[CLS]\n[SEP]\n[MASK]\n[UNK]\n")
    with pytest.raises(DataError, match="tokenized with another vocab"):  # the corpus recorded its vocab
        build_pretraining_datasets(toy["prefix"], str(tiny_vocab), "1", 64, seed=1)
    synth = write_synthetic_indexed(str(tmp_path / "unrecorded"), n_docs=20, seed=1)  # records no vocab
    with pytest.raises(DataError, match="holds token id .* another vocab"):
        build_pretraining_datasets(synth["prefix"], str(tiny_vocab), "1", 64, seed=1)


# ---------------------------------------------------------------------------
# splits + mapping


def test_split_ranges():
    assert parse_split("949,50,1") == pytest.approx((0.949, 0.05, 0.001))
    assert split_doc_ranges(1000, "949,50,1") == {"train": (0, 949), "valid": (949, 999), "test": (999, 1000)}
    assert split_doc_ranges(10, "1") == {"train": (0, 10), "valid": (10, 10), "test": (10, 10)}
    with pytest.raises(DataError):
        parse_split("a,b")


@pytest.mark.parametrize("binary_head", [True, False])
@pytest.mark.parametrize("ssp", [0.0, 0.1, 1.0])
def test_cpp_mapping_equals_python(synth, binary_head, ssp):
    if not helpers_available():
        pytest.skip("data_tools._helpers not compiled (pip install -e .)")
    ix = IndexedDataset(synth["prefix"])
    a, sa = build_mapping(ix.docs, ix.lens, 3, 290, 125, ssp, 42, binary_head, use_cpp=True)
    b, sb = build_mapping_py(ix.docs, ix.lens, 3, 290, 125, ssp, 42, binary_head)
    assert a.dtype == b.dtype == np.int32 and np.array_equal(a, b) and sa == sb
    assert np.all(a[:, 0] >= 3) and np.all(a[:, 0] < 290)
    assert np.all(a[:, 3] <= 125) and np.all(a[:, 3] >= 2)
    if ssp == 0.0:
        assert np.all(a[:, 3] == 125)
    # every sample stays inside its document and samples tile the documents they use
    assert np.all(ix.docs[a[:, 0]] <= a[:, 1]) and np.all(a[:, 2] <= ix.docs[a[:, 0] + 1])
    assert np.all(a[1:, 1][a[1:, 0] == a[:-1, 0]] == a[:-1, 2][a[1:, 0] == a[:-1, 0]])
    if binary_head:
        assert np.all(a[:, 2] - a[:, 1] >= 2)


def test_mapping_skips_long_sentence_docs(tmp_path):
    s = write_synthetic_indexed(str(tmp_path), n_docs=50, seed=1, long_sentence_docs=5)
    ix = IndexedDataset(s["prefix"])
    rows, stats = build_mapping(ix.docs, ix.lens, 0, 50, 509, 0.1, 1, True)
    assert stats["skipped_long_docs"] == 5
    long_docs = {d for d in range(50) if ix.lens[ix.docs[d]:ix.docs[d + 1]].max() > 512}
    assert len(long_docs) == 5 and not long_docs & set(rows[:, 0].tolist())
    rows_py, stats_py = build_mapping_py(ix.docs, ix.lens, 0, 50, 509, 0.1, 1, True)
    assert np.array_equal(rows, rows_py) and stats == stats_py


def _mapping_kwargs(ix, prefix, cache, **kw):
    d = dict(prefix=prefix, split_name="train", split="1", max_seq_len=128, max_num_tokens=125, short_seq_prob=0.1,
             seed=5, binary_head=True, n_tokens=ix.n_tokens, cache_dir=str(cache))
    d.update(kw)
    return d


def test_mapping_cache_builder_and_waiters(synth, tmp_path):
    ix = IndexedDataset(synth["prefix"])
    cache = tmp_path / "cache"
    # a waiter with nothing built times out quickly and clearly
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="builder rank"):
        get_or_build_mapping(ix.docs, ix.lens, (0, 300), is_builder=False, timeout_s=0.3, poll_s=0.05,
                             **_mapping_kwargs(ix, synth["prefix"], cache))
    assert time.monotonic() - t0 < 3
    rows, info = get_or_build_mapping(ix.docs, ix.lens, (0, 300), is_builder=True,
                                      **_mapping_kwargs(ix, synth["prefix"], cache))
    assert info["cached"] is False and os.path.exists(info["path"])
    assert os.path.exists(info["path"][:-4] + ".json")
    assert not [p for p in os.listdir(cache) if ".tmp." in p]
    rows2, info2 = get_or_build_mapping(ix.docs, ix.lens, (0, 300), is_builder=False, timeout_s=1,
                                        **_mapping_kwargs(ix, synth["prefix"], cache))
    assert info2["cached"] and np.array_equal(rows, rows2)
    # different parameters -> different file
    _, info3 = get_or_build_mapping(ix.docs, ix.lens, (0, 300), is_builder=True,
                                    **_mapping_kwargs(ix, synth["prefix"], cache, seed=6))
    assert info3["path"] != info["path"]


def test_mapping_builder_failure_marker(synth, tmp_path):
    ix = IndexedDataset(synth["prefix"])
    cache = tmp_path / "cache"
    kw = _mapping_kwargs(ix, synth["prefix"], cache, max_num_tokens=1)  # invalid -> the build fails
    with pytest.raises(ValueError):
        get_or_build_mapping(ix.docs, ix.lens, (0, 300), is_builder=True, run_id="job1", **kw)
    assert len(list(cache.glob("*.failed"))) == 1
    with pytest.raises(MappingBuildError, match="builder rank failed"):
        get_or_build_mapping(ix.docs, ix.lens, (0, 300), is_builder=False, timeout_s=5, run_id="job1", **kw)
    # a marker of another run is ignored (then the deadline applies)
    with pytest.raises(TimeoutError):
        get_or_build_mapping(ix.docs, ix.lens, (0, 300), is_builder=False, timeout_s=0.3, poll_s=0.05,
                             run_id="job2", **kw)


def test_mapping_waiter_in_other_process(synth, tmp_path):
    """A waiter process started before the builder gets the file as soon as it lands."""
    ix = IndexedDataset(synth["prefix"])
    cache = tmp_path / "cache"
    kw = _mapping_kwargs(ix, synth["prefix"], cache)
    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def wait():
        rows, _ = get_or_build_mapping(ix.docs, ix.lens, (0, 300), is_builder=False, timeout_s=20, poll_s=0.05,
                                       **kw)
        q.put(int(rows.shape[0]))

    p = ctx.Process(target=wait)
    p.start()
    time.sleep(0.3)
    rows, _ = get_or_build_mapping(ix.docs, ix.lens, (0, 300), is_builder=True, **kw)
    assert q.get(timeout=20) == rows.shape[0]
    p.join(5)
    assert p.exitcode == 0


# ---------------------------------------------------------------------------
# masking


def _synthetic_sequence(rng, n_words=120):
    """Stored ids of a [CLS] A [SEP] B [SEP] sequence over the synth vocab (chars 5..3004, ## = +3000)."""
    words = [rng.integers(1, 5) for _ in range(n_words)]
    ids = [1]
    for k, w in enumerate(words):
        c = int(rng.integers(5, 3005))
        ids += [c] + [int(rng.integers(5, 3005)) + 3000 for _ in range(w - 1)]
        if k == n_words // 2:
            ids.append(2)
    ids.append(2)
    return np.array(ids, dtype=np.int64)


def test_mask_statistics_80_10_10_and_whole_words(synth):
    tables = MaskingTables.from_file(synth["vocab"])
    cfg = MaskingConfig()
    rng = np.random.default_rng(0)
    n_mask = n_keep = n_rand = n_tok = n_pred = 0
    for trial in range(300):
        ids = _synthetic_sequence(rng)
        special = (ids == 1) | (ids == 2)
        inp, pos, labels = mask_sequence(ids, special, tables, cfg, np.random.default_rng(trial), 10_000)
        n_tok += ids.shape[0]
        n_pred += pos.shape[0]
        assert np.all(np.diff(pos) > 0) and not special[pos].any()
        assert np.array_equal(labels, tables.input_map[ids][pos])
        n_mask += int((inp[pos] == tables.mask_id).sum())
        n_keep += int((inp[pos] == labels).sum())
        n_rand += int(((inp[pos] != labels) & (inp[pos] != tables.mask_id)).sum())
        # unmasked positions are the model input of the stored ids (## stripped from CJK)
        rest = np.setdiff1d(np.arange(ids.shape[0]), pos)
        assert np.array_equal(inp[rest], tables.input_map[ids][rest])
        # whole words: a word is either fully masked or not at all
        is_start = ~tables.is_cont[ids] | special
        word = np.cumsum(is_start)
        m = np.zeros(ids.shape[0], bool)
        m[pos] = True
        for w in np.unique(word[~special]):
            sel = (word == w) & ~special
            assert m[sel].all() or not m[sel].any()
        assert pos.shape[0] == min(10_000, max(1, round(ids.shape[0] * 0.15)))
    assert n_pred / n_tok == pytest.approx(0.15, abs=0.01)
    assert n_mask / n_pred == pytest.approx(0.8, abs=0.02)
    assert n_keep / n_pred == pytest.approx(0.1, abs=0.015)
    assert n_rand / n_pred == pytest.approx(0.1, abs=0.015)
    # to_chinese_char: no ##CJK id reaches the model
    assert not tables.is_cont[tables.input_map[5 + 3000:3005 + 3000]].any()


def test_ngram_and_geometric_span_distribution():
    rng = np.random.default_rng(1)
    n = _Spans(MaskingConfig()).sample(rng, 200_000)[:-10]
    freq = np.bincount(n, minlength=4)[1:] / n.shape[0]
    assert freq == pytest.approx(np.array([6, 3, 2]) / 11, abs=0.01)
    n = _Spans(MaskingConfig(favor_longer_ngram=True)).sample(rng, 200_000)[:-10]
    assert np.bincount(n, minlength=4)[1:] / n.shape[0] == pytest.approx(np.array([2, 3, 6]) / 11, abs=0.01)
    g = _Spans(MaskingConfig(span="geometric", max_span=10)).sample(rng, 200_000)[:-20]
    assert g.max() == 10 and g.mean() == pytest.approx(4.46, abs=0.1)  # E[min(Geom(0.2), 10)]
    # near the end of the sequence spans shorten to the words available
    assert _Spans(MaskingConfig(max_ngrams=5)).sample(rng, 3).tolist()[-1] == 1


def test_masked_run_lengths_follow_ngrams():
    """Token strategy over single-token words: masked runs get longer with longer n-grams."""
    vocab_ids = np.arange(5, 3005)
    tables = type("T", (), {})()
    tables.is_cont = np.zeros(7000, bool)
    tables.input_map = np.arange(7000)
    tables.mask_id, tables.vocab_size = 3, 3005

    def mean_run(cfg):
        runs = []
        for seed in range(150):
            rng = np.random.default_rng(seed)
            ids = np.concatenate([[1], rng.choice(vocab_ids, 510), [2]])
            special = np.zeros(512, bool)
            special[[0, 511]] = True
            _, pos, _ = mask_sequence(ids, special, tables, cfg, rng, 80)
            breaks = np.flatnonzero(np.diff(pos) > 1)
            runs.append(pos.shape[0] / (breaks.shape[0] + 1))
        return float(np.mean(runs))

    r1 = mean_run(MaskingConfig(strategy="token", max_ngrams=1))
    r3 = mean_run(MaskingConfig(strategy="token"))
    rl = mean_run(MaskingConfig(strategy="token", favor_longer_ngram=True))
    assert r1 < 1.2 < r3 < rl


def test_create_masked_lm_predictions_entry_point(synth):
    tables = MaskingTables.from_file(synth["vocab"], to_chinese_char=False)
    ids = _synthetic_sequence(np.random.default_rng(5))
    inp, pos, labels = create_masked_lm_predictions(ids, tables, MaskingConfig(), np.random.default_rng(5))
    assert pos.shape == labels.shape and 0 < pos.shape[0] <= round(len(ids) * 0.15)
    assert np.array_equal(labels, ids[pos])  # to_chinese_char=False keeps ## ids
    keep = np.setdiff1d(np.arange(ids.shape[0]), pos)
    assert np.array_equal(inp[keep], ids[keep])


def test_truncated_lengths_match_reference_loop():
    for la in range(1, 25):
        for lb in range(0, 25):
            for t in range(2, 50):
                a, b = la, lb
                while a + b > t:
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                assert truncated_lengths(la, lb, t) == (a, b)


def test_masking_config_validation():
    with pytest.raises(ValueError, match="strategy"):
        MaskingConfig(strategy="span")
    with pytest.raises(ValueError, match="masked_lm_prob"):
        MaskingConfig(masked_lm_prob=1.5)
    with pytest.raises(ValueError, match="unknown MaskingConfig field"):
        MaskingConfig.from_dict({"bogus": 1})
    c = MaskingConfig.from_dict({"max_ngrams": 4, "binary_head": False})
    assert c.max_ngrams == 4 and c.predictions_per_seq(512) == 77 and c.max_num_tokens(512) == 510
    assert MaskingConfig(max_predictions_per_seq=20).predictions_per_seq(512) == 20


# ---------------------------------------------------------------------------
# dataset


def test_samples_sop_structure_and_determinism(synth_datasets, synth):
    ds = synth_datasets["train"]
    ix = ds.indexed
    vocab = load_vocab(synth["vocab"])
    swapped = 0
    n = 400
    for i in range(n):
        s = ds[i]
        ids, types = s["input_ids"], s["token_type_ids"]
        t = ids.shape[0]
        assert t <= 128 and ids[0] == vocab.cls_id and ids[-1] == vocab.sep_id
        seps = np.flatnonzero(ids == vocab.sep_id)
        sep1 = seps[0]
        assert np.all(types[:sep1 + 1] == 0) and np.all(types[sep1 + 1:] == 1)
        assert s["masked_positions"].shape[0] <= ds.max_predictions_per_seq
        swapped += s["next_sentence_label"]
        # unmasked tokens of A and B come from the sample's sentences in the stated order
        doc, s0, s1, _ = ds.row(i)
        src = ds.tables.input_map[np.asarray(ix.ids[ix.sents[s0]:ix.sents[s1]], dtype=np.int64)]
        model = ids.copy()
        model[s["masked_positions"]] = s["masked_lm_labels"]
        a, b = model[1:sep1], model[sep1 + 1:t - 1]
        first, second = (b, a) if s["next_sentence_label"] else (a, b)
        fa = _find_sub(src, first)
        fb = _find_sub(src, second)
        assert fa >= 0 and fb >= fa + len(first), i
    assert swapped / n == pytest.approx(0.5, abs=0.08)
    # deterministic per (seed, index), independent of access order and of the instance
    other = build_pretraining_datasets(synth["prefix"], synth["vocab"], "90,8,2", 128, MaskingConfig(), seed=11)
    for i in (399, 0, 17, 5 * len(ds) + 3, 17):
        x, y = ds[i], other["train"][i]
        assert all(np.array_equal(x[k], y[k]) for k in x)
    assert not np.array_equal(ds[1]["input_ids"], ds[2]["input_ids"])
    # thread-safe: concurrent __getitem__ gives the sequential results
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as ex:
        par = list(ex.map(lambda i: ds[i]["input_ids"], range(300)))
    assert all(np.array_equal(p, ds[i]["input_ids"]) for i, p in enumerate(par))
    z = build_pretraining_datasets(synth["prefix"], synth["vocab"], "90,8,2", 128, MaskingConfig(), seed=12)
    assert any(not np.array_equal(ds[i]["input_ids"], z["train"][i]["input_ids"]) for i in range(5))


def _find_sub(hay: np.ndarray, needle: np.ndarray) -> int:
    n = needle.shape[0]
    if n == 0:
        return 0
    win = np.lib.stride_tricks.sliding_window_view(hay, n)
    hits = np.flatnonzero((win == needle).all(axis=1))
    return int(hits[0]) if hits.shape[0] else -1


def test_epochs_wrap_and_order_independent_of_length(synth_datasets):
    ds = synth_datasets["train"]
    n = len(ds)
    e0 = [ds.row(i) for i in range(n)]
    e1 = [ds.row(n + i) for i in range(n)]
    assert sorted(e0) == sorted(e1) == sorted(tuple(map(int, r)) for r in ds.mapping)
    assert e0 != e1
    assert len(set(e0)) == n
    # no "number of samples" parameter exists anywhere: asking for 5 or 50 steps gives the same prefix
    a = [b for _, b in PretrainingBatches(ds, 4, end_step=5)]
    with PretrainingBatches(ds, 4, end_step=50) as it:
        b = [next(it)[1] for _ in range(5)]
    assert all(np.array_equal(x[0][k], y[0][k]) for x, y in zip(a, b) for k in x[0])
    with pytest.raises(IndexError):
        ds[-1]


def test_binary_head_off_and_token_strategy(synth, tmp_path):
    out = build_pretraining_datasets(synth["prefix"], synth["vocab"], "1", 64,
                                     MaskingConfig(binary_head=False, strategy="token", to_chinese_char=False),
                                     seed=3, cache_dir=str(tmp_path))
    ds = out["train"]
    vocab = load_vocab(synth["vocab"])
    split_words = 0
    for i in range(100):
        s = ds[i]
        assert s["next_sentence_label"] == 0 and not s["token_type_ids"].any()
        assert (s["input_ids"] == vocab.sep_id).sum() == 1 and s["input_ids"].shape[0] <= 64
        orig = s["input_ids"].copy()
        orig[s["masked_positions"]] = s["masked_lm_labels"]
        cont = ds.tables.is_cont[orig]
        m = np.zeros(orig.shape[0], bool)
        m[s["masked_positions"]] = True
        # token strategy: some masked continuation piece whose word start is not masked
        split_words += int((m[1:] & cont[1:] & ~m[:-1]).sum())
        assert cont.any()  # to_chinese_char=False keeps ## ids in the input
    assert split_words > 0


# ---------------------------------------------------------------------------
# collate + loader


def test_collate_fixed_shapes():
    samples = [
        {"input_ids": np.array([1, 7, 3, 2]), "token_type_ids": np.array([0, 0, 0, 0]),
         "masked_positions": np.array([2]), "masked_lm_labels": np.array([9]), "next_sentence_label": 1},
        {"input_ids": np.array([1, 8, 2, 5, 2]), "token_type_ids": np.array([0, 0, 0, 1, 1]),
         "masked_positions": np.array([1, 3]), "masked_lm_labels": np.array([4, 6]), "next_sentence_label": 0},
    ]
    b = collate(samples, 6, 3)
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        "input_ids": ((2, 6), np.int64), "token_type_ids": ((2, 6), np.int64), "position_ids": ((2, 6), np.int64),
        "attention_mask": ((2, 1, 1, 6), np.float32), "masked_positions": ((6,), np.int64),
        "masked_lm_labels": ((6, 1), np.int64), "masked_lm_weights": ((6,), np.float32),
        "next_sentence_labels": ((2, 1), np.int64)}
    assert b["input_ids"].tolist() == [[1, 7, 3, 2, 0, 0], [1, 8, 2, 5, 2, 0]]
    assert b["attention_mask"][0, 0, 0].tolist() == [0, 0, 0, 0, -1e4, -1e4]
    assert b["masked_positions"].tolist() == [2, 0, 0, 7, 9, 6]
    assert b["masked_lm_labels"][:, 0].tolist() == [9, -1, -1, 4, 6, -1]
    assert b["masked_lm_weights"].tolist() == [1, 0, 0, 1, 1, 0]
    assert b["next_sentence_labels"].tolist() == [[1], [0]]
    assert b["position_ids"][1].tolist() == list(range(6))
    flat = b["input_ids"].reshape(-1)
    assert flat[b["masked_positions"][[0, 3, 4]]].tolist() == [3, 8, 5]
    with pytest.raises(ValueError, match="max_predictions_per_seq"):
        collate(samples, 6, 1)


def _take(ds, n_steps, **kw):
    with PretrainingBatches(ds, **kw) as it:
        return [next(it) for _ in range(n_steps)]


def _same(a, b):
    assert len(a) == len(b)
    for (sa, ma), (sb, mb) in zip(a, b):
        assert sa == sb and len(ma) == len(mb)
        for x, y in zip(ma, mb):
            assert x.keys() == y.keys()
            for k in x:
                assert np.array_equal(x[k], y[k]), (sa, k)


def test_loader_resume_equals_uninterrupted(synth_datasets):
    ds = synth_datasets["train"]
    kw = dict(micro_batch_size=3, accumulate_steps=2, dp_rank=1, dp_size=2)
    full = _take(ds, 7, num_workers=0, **kw)
    assert [s for s, _ in full] == list(range(7))
    for nw in (0, 2):
        _same(_take(ds, 3, start_step=4, num_workers=nw, **kw), full[4:])
    _same(_take(ds, 7, num_workers=2, prefetch=1, **kw), full)
    # the batches are the samples of the documented index arithmetic
    gbs = 3 * 2 * 2
    step, mbs = full[5]
    first = step * gbs + 1 * 3 * 2 + 1 * 3
    expect = collate([ds[i] for i in range(first, first + 3)], ds.max_seq_len, ds.max_predictions_per_seq)
    assert all(np.array_equal(mbs[1][k], expect[k]) for k in expect)
    # all ranks of a step together cover [s*gbs, (s+1)*gbs) exactly once
    ranges = [r for rank in range(2) for r in PretrainingBatches(ds, 3, 2, rank, 2).samples_for_step(3)]
    assert sorted(i for r in ranges for i in r) == list(range(3 * gbs, 4 * gbs))


def test_loader_workers_shutdown_and_errors(synth_datasets):
    ds = synth_datasets["train"]
    before = set(p.pid for p in mp.active_children())
    it = PretrainingBatches(ds, 4, num_workers=2, prefetch=2)
    next(it)
    pids = [p.pid for p in it._workers]
    it.close()
    it.close()
    assert not (set(p.pid for p in mp.active_children()) - before)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # leaving a with-block early (consumer stops) reaps the workers too
    with PretrainingBatches(ds, 4, num_workers=2) as it:
        for step, _ in it:
            if step == 2:
                break
    assert not (set(p.pid for p in mp.active_children()) - before)
    # end_step ends the iteration
    assert [s for s, _ in PretrainingBatches(ds, 2, start_step=3, end_step=6, num_workers=2)] == [3, 4, 5]
    assert not (set(p.pid for p in mp.active_children()) - before)

    # a worker killed mid-stream (OOM killer...) is an error, never a hang
    import signal

    it = PretrainingBatches(ds, 8, num_workers=2)
    next(it)
    os.kill(it._workers[0].pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="data worker 0"):
        for _ in range(20):
            next(it)
    assert time.monotonic() - t0 < 15
    assert not (set(p.pid for p in mp.active_children()) - before)

    class Broken:
        max_seq_len, max_predictions_per_seq, pad_id = 16, 3, 0

        def __getitem__(self, i):
            if i >= 6:
                raise KeyError(f"bad sample {i}")
            return {"input_ids": np.array([1, 2]), "token_type_ids": np.array([0, 0]),
                    "masked_positions": np.array([1]), "masked_lm_labels": np.array([5]),
                    "next_sentence_label": 0}

    with pytest.raises(RuntimeError, match="bad sample"):
        list(PretrainingBatches(Broken(), 2, num_workers=2, end_step=10))
    assert not (set(p.pid for p in mp.active_children()) - before)


def test_loader_spawn_context(synth_datasets):
    ds = synth_datasets["train"]
    _same(_take(ds, 2, micro_batch_size=2, start_step=9, num_workers=1, mp_context="spawn"),
          _take(ds, 2, micro_batch_size=2, start_step=9, num_workers=0))


def test_dataset_pickles_for_spawned_workers(synth_datasets):
    import pickle

    ds = synth_datasets["train"]
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 2_000_000
    for i in (0, 9, len(ds) + 4):
        assert all(np.array_equal(ds[i][k], clone[i][k]) for k in ds[i])


def test_toy_end_to_end(toy, tmp_path):
    out = build_pretraining_datasets(toy["prefix"], toy["vocab"], "90,8,2", 64, MaskingConfig(), seed=1,
                                     cache_dir=str(tmp_path), is_builder=True)
    assert set(out) == {"train", "valid", "test"} and all(isinstance(v, ErnieDataset) for v in out.values())
    vocab = load_vocab(toy["vocab"])
    with PretrainingBatches(out["train"], 4, 2, num_workers=0) as it:
        step, mbs = next(it)
    b = mbs[0]
    assert b["input_ids"].shape == (4, 64) and b["masked_positions"].shape == (4 * 10,)
    # the model input never contains ##CJK, labels are real vocab ids
    toks = [vocab.tokens[i] for i in b["input_ids"].reshape(-1)]
    assert not [t for t in toks if t.startswith("##") and "\u4e00" <= t[2:3] <= "\u9fa5"]
    labels = b["masked_lm_labels"][b["masked_lm_weights"] > 0, 0]
    assert labels.min() >= 0 and labels.max() < vocab.base_size


def test_a_directory_of_corpora_reads_as_one(synth, synth_datasets, tmp_path):
    """The reference's input_dir: the corpus cut in two files by documents gives exactly the same samples."""
    from data_tools.dataset import IndexedCorpora, IndexedDataset, open_indexed

    whole = IndexedDataset(synth["prefix"])
    cut = whole.n_docs // 3
    s_cut, t_cut = int(whole.docs[cut]), int(whole.sents[int(whole.docs[cut])])
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    parts = {"a_part": (0, cut), "b_part": (cut, whole.n_docs)}
    for name, (d0, d1) in parts.items():
        s0, s1 = int(whole.docs[d0]), int(whole.docs[d1])
        t0, t1 = int(whole.sents[s0]), int(whole.sents[s1])
        np.save(corpora / f"{name}_ids.npy", np.asarray(whole.ids[t0:t1]))
        np.savez(corpora / f"{name}_idx.npz", lens=whole.lens[s0:s1], sents=np.asarray(whole.sents[s0:s1 + 1]) - t0,
                 docs=np.asarray(whole.docs[d0:d1 + 1]) - s0)
    (corpora / "notes.txt").write_text("not a corpus")
    joined = open_indexed(str(corpora))
    assert isinstance(joined, IndexedCorpora) and [p.rsplit("/", 1)[1] for p in joined.prefixes] == ["a_part", "b_part"]
    assert (joined.n_docs, joined.n_sentences, joined.n_tokens) == (whole.n_docs, whole.n_sentences, whole.n_tokens)
    assert np.array_equal(joined.sents, whole.sents) and np.array_equal(joined.docs, whole.docs)
    for d in (0, cut - 1, cut, whole.n_docs - 1):  # documents on both sides of the file boundary
        assert all(np.array_equal(a, b) for a, b in zip(joined.document(d), whole.document(d)))
    assert np.array_equal(joined.ids[t_cut - 5:t_cut + 5], np.asarray(whole.ids[t_cut - 5:t_cut + 5]))
    assert s_cut > 0
    # the same sample mapping and the same masked samples, through the public entry point
    got = build_pretraining_datasets(str(corpora), synth["vocab"], "90,8,2", 128, MaskingConfig(), seed=11,
                                     cache_dir=str(tmp_path / "cache"), is_builder=True)
    for split in ("train", "valid"):
        ref, ds = synth_datasets[split], got[split]
        assert len(ds) == len(ref)
        for i in (0, 1, len(ref) // 2, len(ref) - 1, len(ref) + 3):
            a, b = ds[i], ref[i]
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), (split, i)
    # worker processes receive the dataset by pickling: still the joined corpus
    again = pickle.loads(pickle.dumps(got["train"]))
    assert np.array_equal(again[5]["input_ids"], got["train"][5]["input_ids"])
    with pytest.raises(DataError, match="no <name>_ids.npy"):
        open_indexed(str(tmp_path / "cache"))


# ---------------------------------------------------------------------------
# module layout: one home per concern, the old import paths kept


def test_names_keep_their_old_import_paths():
    """The corpus tool, the dataset and the mapping were split into modules by concern; every name callers
    imported from the old modules is still there, and is the very object of its new home."""
    import importlib

    moved = {
        "create_pretraining_data": {
            "corpus_input": ["InputError", "find_input_files", "iter_documents", "iter_batches", "TEXT_SUFFIXES",
                             "JSON_SUFFIXES", "Doc"],
            "encoder": ["Encoder", "_SENT_SPLIT_RE", "split_mode", "SPLIT_MODES"],
            "corpus_output": ["NpyStreamWriter"],
        },
        "dataset": {
            "indexed": ["IndexedDataset", "IndexedCorpora", "open_indexed", "corpus_prefixes"],
            "splits": ["SPLIT_NAMES", "parse_split", "split_doc_ranges", "split_documents", "dropped_warning"],
            "errors": ["DataError", "MappingBuildError"],
            "mapping": ["get_or_build_mapping", "build_mapping", "build_mapping_for_docs", "build_mapping_py",
                        "helpers_available"],
        },
        "mapping": {"errors": ["DataError", "MappingBuildError"]},
    }
    for old, homes in moved.items():
        old_mod = importlib.import_module(f"data_tools.{old}")
        for home, names in homes.items():
            new_mod = importlib.import_module(f"data_tools.{home}")
            for name in names:
                assert getattr(old_mod, name) is getattr(new_mod, name), (old, home, name)
    for name in __import__("data_tools").__all__:  # the package's lazy names
        assert getattr(__import__("data_tools"), name) is not None
    assert callable(importlib.import_module("data_tools.create_pretraining_data").main)


def test_corpus_tool_imports_stay_light():
    code = ("import sys, data_tools.create_pretraining_data; "
            "bad = [m for m in ('paddle', 'paddlenlp', 'jieba', 'tqdm') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_masking_has_one_home():
    """Whole-word masking is data_tools.masking: no other module of the project builds masks."""
    for path in sorted((REPO / "data_tools").glob("*.py")) + sorted((REPO / "ernie_cluster").rglob("*.py")):
        if path.name == "masking.py" and path.parent.name == "data_tools":
            continue
        text = path.read_text(encoding="utf-8")
        for marker in ("num_to_predict", ".is_cont[", "tables.mask_id", "def mask_sequence",
                       "def create_masked_lm_predictions", "def _select_spans"):
            assert marker not in text, f"{path.relative_to(REPO)} has masking code ({marker})"


def test_splitmix_array_matches_the_scalar_function():
    from data_tools.splitmix import GOLDEN, M64, mix64, mix64_array

    rng = np.random.default_rng(3)
    xs = np.concatenate([rng.integers(0, 1 << 63, 200, dtype=np.uint64) * np.uint64(2) + np.uint64(1),
                         np.array([0, 1, M64, M64 - 1, 1 << 63], dtype=np.uint64)])
    assert [int(v) for v in mix64_array(xs)] == [mix64(int(x)) for x in xs]
    # the first outputs of the splitmix64 generator seeded with 0 (the reference sequence)
    assert [mix64(k * GOLDEN & M64) for k in (1, 2)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_failed_index_write_leaves_no_files(toy, tmp_path, monkeypatch):
    """An error after the ids were streamed (here: writing the index) removes both temporary files."""
    import data_tools.create_pretraining_data as cpd

    def broken(path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cpd, "write_index", broken)
    with pytest.raises(OSError, match="disk full"):
        create_pretraining_data([toy["corpus"]], toy["vocab"], str(tmp_path / "o" / "p"), workers=2, progress=False)
    assert os.listdir(tmp_path / "o") == []


def test_every_name_imported_from_a_data_tools_module_is_there():
    """Whatever module of data_tools holds a name now, every `from data_tools.X import NAME` of the project
    (package code, tests, benchmarks, scripts) still finds it."""
    import ast
    import importlib

    wanted = {}
    for top in ("ernie_cluster", "data_tools", "tests", "bench", "scripts"):
        for path in sorted((REPO / top).rglob("*.py")):
            package = ".".join(path.relative_to(REPO).parent.parts)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.ImportFrom):
                    continue
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                if module and module.startswith("data_tools.") and module != "data_tools._helpers":
                    wanted.setdefault(module, set()).update(a.name for a in node.names if a.name != "*")
    assert {"data_tools.create_pretraining_data", "data_tools.dataset", "data_tools.mapping"} <= set(wanted)
    missing = sorted(f"{m}.{n}" for m, names in wanted.items() for n in names
                     if not hasattr(importlib.import_module(m), n))
    assert missing == []
