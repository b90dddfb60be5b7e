"""Raw text / jsonl corpus -> token ids for ERNIE pretraining.

    python -m data_tools.create_pretraining_data --input PATH [PATH ...] --vocab-file vocab.txt \\
        --output-prefix out/corpus [--workers N] [--json-key text] [--chinese] \\
        [--cn-whole-word-segment] [--cn-seg-func jieba|none] [--cn-splited --cn-split-dimer ' '] \\
        [--append-eos] [--split-sentences [auto|all|none]] [--tokenizer builtin|paddlenlp]

Input: files or directories (searched recursively for *.txt, *.text, *.jsonl,
*.json and their .gz).  ``.jsonl``/``.json`` files hold one ``{"text": ...}``
document per line; other files are raw text with documents separated by blank
lines and one sentence per line.

Sentences (``--split-sentences``, default ``auto``): the text of a jsonl
document is split at its newlines and after sentence-ending punctuation
(``。！？!?；;``, optionally followed by a closing quote or bracket, and ``.``
followed by whitespace), because a jsonl document is usually a paragraph or
a whole article on one line, and sentence-order prediction (binary_head)
drops documents of one sentence.  Raw text files are taken as written, one
sentence per line.  ``all`` splits raw text lines too (the former bare
``--split-sentences``), ``none`` splits only at newlines (the former
default).  The rule is deliberately simple: an abbreviation such as ``e.g. x``
gets a spurious boundary, which only moves where a sample may be cut.

Output (the reference layout): ``<P>_ids.npy`` (uint16 if the id space is below
65535, else int32) and ``<P>_idx.npz`` with ``lens`` (int32 tokens per
sentence), ``sents`` (int64 token offsets, starting at 0) and ``docs`` (int64
sentence offsets per document, starting at 0), plus ``vocab_sha256`` (0-d
string: sha256 of the vocab's tokens joined by newlines, the digest of
``ernie_cluster.weights.vocab_digest``, so a run can tell which vocabulary
produced the ids) and ``vocab_file`` (0-d string: the vocab's absolute path,
for messages).  Readers that know only the reference arrays ignore the extra
two.  Both files are written to temporary files and renamed into place at the
end.

With ``--cn-whole-word-segment`` Chinese text is segmented (jieba, or the
existing ``--cn-split-dimer`` separators with ``--cn-splited``) and the 2nd..nth
character of each word of <= 4 characters is written as ``##X``; if the vocab
has no ``##X`` an extension id above the vocab is used (the dataset maps it back).
LAC is never imported.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np  # imported before anything that may import paddle (zlib import-order bug of paddle 2.6)

from .corpus_input import (JSON_SUFFIXES, TEXT_SUFFIXES, Doc, InputError, find_input_files, iter_batches,
                           iter_documents, same_file)
from .corpus_output import NpyStreamWriter, offsets, write_index
from .encoder import _SENT_SPLIT_RE, SPLIT_MODES, Encoder, encoded_batches, split_mode
from .vocab import VocabError, load_vocab

log = logging.getLogger("data_tools.create_pretraining_data")


def _progress(total_bytes: int, enabled: Optional[bool]):
    from tqdm import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="tokenizing",
                file=sys.stderr, disable=disable, mininterval=0.5, smoothing=0.1)


def _drain(results: Iterable[Tuple[np.ndarray, np.ndarray, np.ndarray, int]], writer: NpyStreamWriter,
           total_bytes: int, progress: Optional[bool], log_interval_s: float, t_start: float
           ) -> Tuple[np.ndarray, np.ndarray]:
    """Stream the ids of every encoded batch to ``writer``, showing progress (a bar on a terminal, else a log
    line every ``log_interval_s``); returns the corpus's sentence lengths and sentences per document."""
    lens_parts: List[np.ndarray] = []
    doc_parts: List[np.ndarray] = []
    done_bytes = 0
    next_log = time.time() + log_interval_s
    with _progress(total_bytes, progress) as bar:
        for ids, lens, counts, nb in results:
            writer.write(ids)
            lens_parts.append(lens)
            doc_parts.append(counts)
            done_bytes += nb
            bar.update(nb)
            if bar.disable and time.time() >= next_log:
                el = time.time() - t_start
                log.info("processed %.1f/%.1f MB (%.2f MB/s), %d tokens", done_bytes / 1e6,
                         total_bytes / 1e6, done_bytes / 1e6 / max(el, 1e-9), writer.count)
                next_log = time.time() + log_interval_s
    lens_all = np.concatenate(lens_parts) if lens_parts else np.zeros(0, np.int32)
    counts_all = np.concatenate(doc_parts) if doc_parts else np.zeros(0, np.int64)
    return lens_all, counts_all


def _input_files(inputs: Sequence[str], vocab_file: str, cn_whole_word_segment: bool, cn_seg_func: str,
                 cn_splited: bool) -> List[str]:
    """The input files (the vocab file left out), after checking the segmentation options."""
    files = [f for f in find_input_files(inputs) if not same_file(f, vocab_file)]
    if not files:
        raise InputError("the only input file is the vocab file")
    if cn_whole_word_segment and cn_seg_func not in ("jieba", "none") and not cn_splited:
        raise InputError(f"unknown --cn-seg-func {cn_seg_func!r} (jieba or none)")
    return files


def create_pretraining_data(inputs: Sequence[str], vocab_file: str, output_prefix: str, workers: int = 1,
                            json_key: str = "text", chinese: bool = False, cn_whole_word_segment: bool = False,
                            cn_seg_func: str = "jieba", cn_splited: bool = False, cn_split_dimer: str = " ",
                            append_eos: bool = False, split_sentences="auto", max_word_length: int = 4,
                            tokenizer: str = "builtin", progress: Optional[bool] = None,
                            log_interval_s: float = 30.0) -> dict:
    """Run the conversion; returns a summary dict. Raises InputError/VocabError on bad input.

    ``chinese`` (``--chinese``) changes nothing: Chinese punctuation always ends a sentence where text is split.
    """
    t_start = time.time()
    vocab = load_vocab(vocab_file)  # fails early with a clear message
    vocab_digest = vocab.sha256  # of the file as read now; the workers read the same file
    files = _input_files(inputs, vocab_file, cn_whole_word_segment, cn_seg_func, cn_splited)
    split_sentences = split_mode(split_sentences)
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    dtype = vocab.ids_dtype_name()
    total_bytes = sum(os.path.getsize(f) for f in files)
    enc_kwargs = dict(vocab_file=vocab_file, whole_word=cn_whole_word_segment, seg_func=cn_seg_func,
                      splited=cn_splited, split_dimer=cn_split_dimer, max_word_length=max_word_length,
                      append_eos=append_eos, split_sentences=split_sentences, tokenizer=tokenizer)
    ids_path, idx_path = output_prefix + "_ids.npy", output_prefix + "_idx.npz"
    suffix = f".tmp.{os.getpid()}"
    writer = NpyStreamWriter(ids_path + suffix, dtype)
    try:
        with encoded_batches(files, json_key, dtype, workers, enc_kwargs) as results:
            lens_all, counts_all = _drain(results, writer, total_bytes, progress, log_interval_s, t_start)
        if counts_all.shape[0] == 0:
            raise InputError(f"no non-empty documents found in {len(files)} input file(s)")
        sents, docs = offsets(lens_all), offsets(counts_all)
        writer.close()
        write_index(idx_path + suffix, lens_all, sents, docs, vocab_digest, vocab.path)
        os.replace(ids_path + suffix, ids_path)
        os.replace(idx_path + suffix, idx_path)
    except BaseException:
        writer.abort()
        if os.path.exists(idx_path + suffix):
            os.unlink(idx_path + suffix)
        raise
    elapsed = time.time() - t_start
    return {"ids": ids_path, "idx": idx_path, "dtype": dtype, "documents": int(docs.shape[0] - 1),
            "sentences": int(lens_all.shape[0]), "tokens": int(sents[-1]), "input_bytes": total_bytes,
            "seconds": round(elapsed, 3), "mb_per_s": round(total_bytes / 1e6 / max(elapsed, 1e-9), 3),
            "vocab_size": vocab.base_size, "id_space": vocab.size, "vocab_file": vocab.path,
            "vocab_sha256": vocab_digest, "split_sentences": split_sentences,
            "single_sentence_documents": int(np.count_nonzero(counts_all == 1))}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_tools.create_pretraining_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help="files or directories")
    p.add_argument("--vocab-file", required=True, help="local vocab.txt (one token per line)")
    p.add_argument("--output-prefix", required=True, help="writes <P>_ids.npy and <P>_idx.npz")
    try:
        default_workers = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        default_workers = os.cpu_count() or 1
    p.add_argument("--workers", type=int, default=default_workers,
                   help=f"processes (default: usable cores, here {default_workers})")
    p.add_argument("--json-key", default="text", help="document key in .jsonl input (default text)")
    p.add_argument("--chinese", action="store_true",
                   help="Chinese corpus: with --split-sentences split on Chinese punctuation too (always on)")
    p.add_argument("--cn-whole-word-segment", action="store_true", help="write ## marks for Chinese words")
    p.add_argument("--cn-seg-func", default="jieba", choices=["jieba", "none"], help="word segmenter (default jieba)")
    p.add_argument("--cn-splited", action="store_true", help="text is already segmented by --cn-split-dimer")
    p.add_argument("--cn-split-dimer", default=" ", help="word separator of --cn-splited text (default space)")
    p.add_argument("--max-word-length", type=int, default=4, help="longest word (chars) that gets ## marks")
    p.add_argument("--append-eos", action="store_true",
                   help="append an end-of-document token ([EOS], </s> or else [SEP]) to each document")
    p.add_argument("--split-sentences", nargs="?", const="all", default="auto", choices=SPLIT_MODES,
                   help="split text into sentences at 。！？!?；; and '. ' as well as at newlines: auto (default) "
                        "for jsonl text only, all for every file (the bare flag), none: newlines only")
    p.add_argument("--tokenizer", default="builtin", choices=["builtin", "paddlenlp"],
                   help="builtin (fast, same tokens as ErnieTokenizer) or paddlenlp ErnieTokenizer")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if args.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        s = create_pretraining_data(
            args.input, args.vocab_file, args.output_prefix, workers=args.workers, json_key=args.json_key,
            chinese=args.chinese, cn_whole_word_segment=args.cn_whole_word_segment, cn_seg_func=args.cn_seg_func,
            cn_splited=args.cn_splited, cn_split_dimer=args.cn_split_dimer, append_eos=args.append_eos,
            split_sentences=args.split_sentences, max_word_length=args.max_word_length, tokenizer=args.tokenizer,
            progress=False if args.no_progress else None)
    except (InputError, VocabError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {s['ids']} ({s['dtype']}, {s['tokens']} tokens) and {s['idx']} ({s['documents']} documents, "
          f"{s['sentences']} sentences) from {s['input_bytes'] / 1e6:.2f} MB in {s['seconds']:.1f}s "
          f"({s['mb_per_s']:.2f} MB/s); vocab {s['vocab_file']} (sha256 {s['vocab_sha256'][:12]}...)",
          file=sys.stderr)
    if s["single_sentence_documents"]:
        print(f"note: {s['single_sentence_documents']} of {s['documents']} documents have a single sentence; "
              f"training with sentence-order prediction (binary_head) skips them (sentence splitting: "
              f"--split-sentences {s['split_sentences']})", file=sys.stderr)
    return 0


# Names of this module before its input, encoding and output parts got modules of their own.
__all__ = ["create_pretraining_data", "build_parser", "main", "InputError", "Encoder", "NpyStreamWriter",
           "find_input_files", "iter_documents", "iter_batches", "split_mode", "Doc", "SPLIT_MODES",
           "TEXT_SUFFIXES", "JSON_SUFFIXES", "_SENT_SPLIT_RE"]


if __name__ == "__main__":
    sys.exit(main())
