"""Data pipeline throughput, each figure against a baseline measured side by side in the same run.

(a) masking + collate at seq 512 (micro-batch 32, whole-word masking, SOP), samples/s:
    in-process, and through ``PretrainingBatches`` with 1 and 2 worker processes.  Baseline: a straightforward
    numpy/list re-implementation of the reference ``ErnieDataset.__getitem__`` (``RandomState(seed + idx)``
    per sample, per-token Python loops of ``create_masked_lm_predictions``, ``truncate_segments`` one token
    at a time, ``pad_and_convert_to_numpy``) over the SAME samples, fed to the same collate/loader.
    Goals: >= 2x the baseline; >= 3,000 samples/s with 2 workers.
(b) sample-mapping build: the C++ helper vs the pure-Python ``build_mapping_py`` on a synthetic corpus
    (identical output asserted).  Goal: >= 20x.
(c) corpus -> ids (jieba whole-word segmentation + WordPiece) in MB/s of raw text, 1 process and all cores,
    vs a reference-style pipeline (jieba + paddlenlp ``ErnieTokenizer`` + the reference's set-based
    ``get_whole_word_mask_tokens``) in 1 process.

    python bench/bench_data.py [--quick] [--json OUT]      (or python -m bench.bench_data)
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

if __package__ in (None, ""):  # run as a file: make `bench` and `data_tools` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402  (before anything that may import paddle)

from bench.common import make_row, module_main, summarize  # noqa: E402

SEQ = 512
MICRO = 32
SEED = 1234


# ---------------------------------------------------------------------------
# (a) baseline: reference-style sample building (written for this benchmark only)


class RefStyleDataset:
    """Same samples as an ErnieDataset (same mapping rows and epoch order), built the reference way."""

    def __init__(self, ds, vocab):
        self.ds = ds
        self.seed = ds.seed
        self.max_seq_len = ds.max_seq_len
        self.max_predictions_per_seq = ds.max_predictions_per_seq
        self.pad_id = ds.pad_id
        self.masked_lm_prob = ds.masking.masked_lm_prob
        self.max_ngrams = ds.masking.max_ngrams
        self.vocab_id_list = list(range(vocab.base_size))
        self.vocab_id_to_token_dict = dict(enumerate(vocab.tokens))
        self.vocab_token_to_id_dict = dict(vocab.token_to_id)
        self.cls_id, self.sep_id, self.mask_id = vocab.cls_id, vocab.sep_id, vocab.mask_id

    def __getitem__(self, idx):
        _, s0, s1, target = self.ds.row(idx)
        ix = self.ds.indexed
        sample = [ix.ids[ix.sents[s]:ix.sents[s + 1]].tolist() for s in range(s0, s1)]
        np_rng = np.random.RandomState(seed=((self.seed + idx) % 2 ** 32))
        return self._build(sample, target, np_rng)

    def _build(self, sample, target_seq_length, np_rng):
        # A/B split, random swap
        n = len(sample)
        a_end = 1 if n < 3 else np_rng.randint(1, n)
        tokens_a = [t for s in sample[:a_end] for t in s]
        tokens_b = [t for s in sample[a_end:] for t in s]
        is_next_random = False
        if np_rng.random() < 0.5:
            is_next_random = True
            tokens_a, tokens_b = tokens_b, tokens_a
        # truncate one token at a time
        len_a, len_b = len(tokens_a), len(tokens_b)
        while len_a + len_b > target_seq_length:
            if len_a > len_b:
                len_a -= 1
                trunc = tokens_a
            else:
                len_b -= 1
                trunc = tokens_b
            if np_rng.random() < 0.5:
                del trunc[0]
            else:
                trunc.pop()
        tokens = [self.cls_id] + tokens_a + [self.sep_id] + tokens_b + [self.sep_id]
        types = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
        max_predictions = self.masked_lm_prob * target_seq_length
        out, positions, labels = self._mask(tokens, max_predictions, np_rng)
        # pad_and_convert_to_numpy
        pad = self.max_seq_len - len(out)
        tokens_np = np.array(out + [self.pad_id] * pad, dtype=np.int64)
        types_np = np.array(types + [self.pad_id] * pad, dtype=np.int64)
        padding_mask = np.array([1] * len(out) + [0] * pad, dtype=np.float32)
        padding_mask = ((1 - padding_mask) * -1e4).reshape([1, 1, -1])
        n_tok = len(out)
        return {"input_ids": tokens_np[:n_tok], "token_type_ids": types_np[:n_tok],
                "masked_positions": np.array(positions, dtype=np.int64),
                "masked_lm_labels": np.array(labels, dtype=np.int64), "next_sentence_label": int(is_next_random)}

    def _mask(self, tokens, max_predictions_per_seq, np_rng):
        id2tok = self.vocab_id_to_token_dict
        cand_indexes = []
        token_boundary = [0] * len(tokens)
        for i, token in enumerate(tokens):
            if token == self.cls_id or token == self.sep_id:
                token_boundary[i] = 1
                continue
            piece = id2tok[token]
            if cand_indexes and piece.startswith("##"):
                cand_indexes[-1].append(i)
            else:
                cand_indexes.append([i])
                token_boundary[i] = 1
        output_tokens = []
        for i, b in enumerate(token_boundary):
            if b == 0:
                piece = id2tok[tokens[i]]
                new = piece[2:] if re.findall("##[\u4E00-\u9FA5]", piece) else piece
                output_tokens.append(self.vocab_token_to_id_dict.get(new, tokens[i]))
            else:
                output_tokens.append(tokens[i])
        num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(tokens) * self.masked_lm_prob))))
        ngrams = np.arange(1, self.max_ngrams + 1, dtype=np.int64)
        pvals = 1.0 / np.arange(1, self.max_ngrams + 1)
        pvals /= pvals.sum(keepdims=True)
        ngram_indexes = [[cand_indexes[idx:idx + n] for n in ngrams] for idx in range(len(cand_indexes))]
        np_rng.shuffle(ngram_indexes)
        backup = list(output_tokens)
        masked_lms = []
        covered = set()
        for cand in ngram_indexes:
            if len(masked_lms) >= num_to_predict:
                break
            if not cand:
                continue
            n = np_rng.choice(ngrams[:len(cand)], p=pvals[:len(cand)] / pvals[:len(cand)].sum(keepdims=True))
            index_set = sum(cand[n - 1], [])
            n -= 1
            while len(masked_lms) + len(index_set) > num_to_predict:
                if n == 0:
                    break
                index_set = sum(cand[n - 1], [])
                n -= 1
            if len(masked_lms) + len(index_set) > num_to_predict:
                continue
            if any(i in covered for i in index_set):
                continue
            for index in index_set:
                covered.add(index)
                if np_rng.random() < 0.8:
                    masked = self.mask_id
                elif np_rng.random() < 0.5:
                    masked = output_tokens[index]
                else:
                    masked = self.vocab_id_list[np_rng.randint(0, len(self.vocab_id_list))]
                output_tokens[index] = masked
                masked_lms.append((index, backup[index]))
        masked_lms.sort()
        return output_tokens, [p for p, _ in masked_lms], [lab for _, lab in masked_lms]


def _samples_per_s_inprocess(ds, start: int, n: int) -> float:
    from data_tools.loader import collate

    t0 = time.perf_counter()
    for i in range(start, start + n, MICRO):
        collate([ds[j] for j in range(i, i + MICRO)], ds.max_seq_len, ds.max_predictions_per_seq, ds.pad_id)
    return n / (time.perf_counter() - t0)


def _samples_per_s_loader(ds, workers: int, start_step: int, steps: int) -> float:
    from data_tools.loader import PretrainingBatches

    with PretrainingBatches(ds, MICRO, 1, start_step=start_step, num_workers=workers, prefetch=4) as it:
        next(it)  # worker start-up is not part of the steady-state rate
        t0 = time.perf_counter()
        for _ in range(steps):
            next(it)
        return steps * MICRO / (time.perf_counter() - t0)


def bench_masking(quick: bool, tmp: str) -> List[Dict[str, Any]]:
    from data_tools.dataset import build_pretraining_datasets
    from data_tools.masking import MaskingConfig
    from data_tools.synthetic import write_synthetic_indexed
    from data_tools.vocab import load_vocab

    syn = write_synthetic_indexed(os.path.join(tmp, "synth"), n_docs=3000, seed=1)
    ds = build_pretraining_datasets(syn["prefix"], syn["vocab"], "1", SEQ, MaskingConfig(), seed=SEED)["train"]
    ref = RefStyleDataset(ds, load_vocab(syn["vocab"]))
    mean_len = float(np.mean([ds[i]["input_ids"].shape[0] for i in range(200)]))
    repeats = 3 if quick else 5
    rows = []

    n_fast, n_ref = (1024, 128) if quick else (4096, 512)
    mine, base = [], []
    for r in range(repeats):  # interleaved, different samples each repeat
        mine.append(_samples_per_s_inprocess(ds, r * n_fast, n_fast))
        base.append(_samples_per_s_inprocess(ref, r * n_ref, n_ref))
    m, b = summarize(mine), summarize(base)
    rows.append(make_row("masking_collate_inprocess_seq512", m["median"], "samples/s",
                         baseline="reference-style numpy, in-process", baseline_value=b["median"],
                         higher_is_better=True, goal=">= 2x baseline", goal_met=m["median"] >= 2 * b["median"],
                         runs=m["runs"], spread=m["spread"], baseline_runs=b["runs"],
                         note=f"1 core, B={MICRO}, mean {mean_len:.0f} tokens/sample"))

    for workers in (1, 2):
        steps_fast, steps_ref = ((40, 4) if quick else (120, 16))
        mine, base = [], []
        for r in range(repeats):
            mine.append(_samples_per_s_loader(ds, workers, 1000 + r * 500, steps_fast))
            base.append(_samples_per_s_loader(ref, workers, 1000 + r * 500, steps_ref))
        m, b = summarize(mine), summarize(base)
        goal_ok = m["median"] >= 2 * b["median"]
        goal = ">= 2x baseline"
        if workers == 2:
            goal = ">= 3,000 samples/s and >= 2x baseline"
            goal_ok = goal_ok and m["median"] >= 3000
        rows.append(make_row(f"loader_{workers}worker_seq512", m["median"], "samples/s",
                             baseline=f"reference-style numpy, {workers} worker(s)", baseline_value=b["median"],
                             higher_is_better=True, goal=goal, goal_met=goal_ok, runs=m["runs"], spread=m["spread"],
                             baseline_runs=b["runs"],
                             note=f"PretrainingBatches(num_workers={workers}), B={MICRO}, fixed-shape collate, "
                                  f"{os.cpu_count()} cores shared with the consumer"))
    return rows


# ---------------------------------------------------------------------------
# (b) mapping build


def bench_mapping(quick: bool) -> List[Dict[str, Any]]:
    from data_tools.mapping import build_mapping, build_mapping_py, helpers_available

    if not helpers_available():
        return [make_row("mapping_build_cpp", None, "s", goal=">= 20x", goal_met=False,
                         note="data_tools._helpers not compiled: run pip install -e .", status="failed")]
    rng = np.random.default_rng(0)
    n_docs = 50_000 if quick else 300_000
    nsent = rng.integers(1, 30, n_docs)
    docs = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(nsent, out=docs[1:])
    lens = rng.integers(5, 80, int(docs[-1])).astype(np.int32)
    lens[rng.integers(0, lens.shape[0], 100)] = 600
    repeats = 3 if quick else 5
    cpp, py = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a, sa = build_mapping(docs, lens, 0, n_docs, SEQ - 3, 0.1, SEED, True, use_cpp=True)
        cpp.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b, sb = build_mapping_py(docs, lens, 0, n_docs, SEQ - 3, 0.1, SEED, True)
        py.append(time.perf_counter() - t0)
        assert np.array_equal(a, b) and sa == sb, "C++ and Python mappings differ"
    c, p = summarize(cpp), summarize(py)
    speedup = p["median"] / c["median"]
    return [make_row("mapping_build_cpp", c["median"], "s", baseline="pure-Python build_mapping_py",
                     baseline_value=p["median"], higher_is_better=False, goal=">= 20x faster (ratio <= 0.05)",
                     goal_met=speedup >= 20, runs=c["runs"], spread=c["spread"], baseline_runs=p["runs"],
                     note=f"{n_docs:,} docs, {int(docs[-1]):,} sentences, {a.shape[0]:,} samples; identical output "
                          f"asserted; {speedup:.0f}x faster")]


# ---------------------------------------------------------------------------
# (c) corpus -> ids


def _ref_style_convert(corpus: str, vocab_file: str) -> float:
    """jieba + paddlenlp ErnieTokenizer + the reference's set-based ## marking, 1 process; returns seconds."""
    import jieba
    import zlib  # noqa: F401  paddle import-order bug

    from paddlenlp.transformers import ErnieTokenizer

    tok = ErnieTokenizer(vocab_file=vocab_file)
    t0 = time.perf_counter()
    out = []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            words = set(jieba.lcut(line))
            tokens = tok.tokenize(line)
            new = []
            i = 0
            while i < len(tokens):
                if not re.findall("[\u4E00-\u9FA5]", tokens[i]):
                    new.append(tokens[i])
                    i += 1
                    continue
                for length in range(4, 0, -1):
                    if i + length > len(tokens):
                        continue
                    if "".join(tokens[i:i + length]) in words:
                        new.append(tokens[i])
                        new.extend("##" + t for t in tokens[i + 1:i + length])
                        i += length
                        break
                else:
                    new.append(tokens[i])
                    i += 1
            out.append(tok.convert_tokens_to_ids(new))
    return time.perf_counter() - t0


def bench_corpus(quick: bool, tmp: str) -> List[Dict[str, Any]]:
    import logging

    import jieba

    from data_tools.create_pretraining_data import create_pretraining_data
    from data_tools.toy_corpus import write_toy_corpus

    jieba.setLogLevel(logging.WARNING)
    info = write_toy_corpus(os.path.join(tmp, "toy"), docs=2000 if quick else 12000, seed=3)
    mb = info["bytes"] / 1e6
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    repeats = 2 if quick else 3
    prefix = os.path.join(tmp, "ids")

    def ours(workers: int) -> float:
        t0 = time.perf_counter()
        create_pretraining_data([info["corpus"]], info["vocab"], prefix, workers=workers,
                                cn_whole_word_segment=True, progress=False)
        return time.perf_counter() - t0

    ours(1)  # warm: jieba dictionary, character classes
    try:
        _ref_style_convert(info["corpus"], info["vocab"])  # warm + imports paddlenlp
        have_ref = True
    except ImportError:
        have_ref = False
    one, allc, ref = [], [], []
    for _ in range(repeats):
        one.append(mb / ours(1))
        allc.append(mb / ours(cores))
        if have_ref:
            ref.append(mb / _ref_style_convert(info["corpus"], info["vocab"]))
    o, a = summarize(one), summarize(allc)
    r = summarize(ref) if ref else None
    rows = []
    for name, m, note in (("corpus_to_ids_1proc", o, "1 process"),
                          (f"corpus_to_ids_{cores}proc", a, f"{cores} processes (all usable cores)")):
        rows.append(make_row(name, m["median"], "MB/s", baseline="jieba + paddlenlp ErnieTokenizer, 1 process",
                             baseline_value=r["median"] if r else None, higher_is_better=True,
                             goal="> baseline", goal_met=(m["median"] > r["median"]) if r else None,
                             runs=m["runs"], spread=m["spread"], baseline_runs=r["runs"] if r else [],
                             note=f"{note}; {mb:.1f} MB toy corpus, whole-word segmentation (jieba), wall time "
                                  f"incl. pool start-up and writing the files"))
    return rows


def run(quick: bool) -> List[Dict[str, Any]]:
    tmp = tempfile.mkdtemp(prefix="bench_data-")
    try:
        return bench_masking(quick, tmp) + bench_mapping(quick) + bench_corpus(quick, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(module_main(run, name="bench_data"))
