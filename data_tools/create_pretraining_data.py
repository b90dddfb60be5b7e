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
import gzip
import io
import json
import logging
import multiprocessing as mp
import os
import re
import struct
import sys
import time
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np  # imported before anything that may import paddle (zlib import-order bug of paddle 2.6)

from .tokenizer import FastWordPieceTokenizer, apply_whole_word_marks, whole_word_flags
from .vocab import CORPUS_VOCAB_FILE_KEY, CORPUS_VOCAB_KEY, VocabError, is_wwm_cjk_char, load_vocab

log = logging.getLogger("data_tools.create_pretraining_data")

TEXT_SUFFIXES = (".txt", ".text", ".jsonl", ".json")
JSON_SUFFIXES = (".jsonl", ".json")


class InputError(ValueError):
    """Bad command line input (missing files, nothing to read, ...)."""


# ---------------------------------------------------------------------------
# input


def find_input_files(paths: Sequence[str]) -> List[str]:
    files: List[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for n in sorted(names):
                    base = n[:-3] if n.endswith(".gz") else n
                    if not n.startswith(".") and base.endswith(TEXT_SUFFIXES):
                        found.append(os.path.join(root, n))
            if not found:
                raise InputError(f"input directory {p} has no {'/'.join(TEXT_SUFFIXES)} files")
            files.extend(found)
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise InputError(f"input not found: {p}")
    if not files:
        raise InputError("no input files given")
    return files


def _open_text(path: str) -> io.TextIOBase:
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, "r", encoding="utf-8", errors="replace")


def _is_json(path: str) -> bool:
    base = path[:-3] if path.endswith(".gz") else path
    return base.endswith(JSON_SUFFIXES)


Doc = List[str]
SPLIT_MODES = ("auto", "all", "none")


def iter_documents(path: str, json_key: str = "text") -> Iterator[Tuple[Doc, int]]:
    """Yield ``(lines, n_bytes)`` per document of one file."""
    with _open_text(path) as f:
        if _is_json(path):
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({e})") from None
                if not isinstance(obj, dict) or json_key not in obj:
                    raise InputError(f"{path}:{lineno}: no key {json_key!r} (use --json-key)")
                text = obj[json_key]
                if not isinstance(text, str):
                    raise InputError(f"{path}:{lineno}: {json_key!r} is not a string")
                yield text.splitlines(), len(line.encode("utf-8"))
        else:
            doc: Doc = []
            nbytes = 0
            for line in f:
                nbytes += len(line.encode("utf-8"))
                if line.strip():
                    doc.append(line)
                elif doc:
                    yield doc, nbytes
                    doc, nbytes = [], 0
            if doc:
                yield doc, nbytes


def iter_batches(files: Sequence[str], json_key: str, max_docs: int = 256, max_bytes: int = 1 << 20
                 ) -> Iterator[Tuple[List[Doc], List[bool], int]]:
    """``(documents, from_json flags, n_bytes)`` batches over all files."""
    batch: List[Doc] = []
    flags: List[bool] = []
    nbytes = 0
    for path in files:
        is_json = _is_json(path)
        for doc, nb in iter_documents(path, json_key):
            batch.append(doc)
            flags.append(is_json)
            nbytes += nb
            if len(batch) >= max_docs or nbytes >= max_bytes:
                yield batch, flags, nbytes
                batch, flags, nbytes = [], [], 0
    if batch:
        yield batch, flags, nbytes


def split_mode(value) -> str:
    """``auto``/``all``/``none``; True and False mean ``all`` and ``none`` (the former boolean option)."""
    if value is True or value is False:
        return "all" if value else "none"
    if value not in SPLIT_MODES:
        raise InputError(f"unknown sentence split mode {value!r} ({', '.join(SPLIT_MODES)})")
    return value


# ---------------------------------------------------------------------------
# encoding (runs in the worker processes)

_SENT_SPLIT_RE = re.compile(r"(?<=[。！？!?；;])(?![”’」』）)\"'])|(?<=[。！？!?][”’」』）)\"'])|(?<=\.)\s+(?=\S)")


class Encoder:
    """Sentence -> ids, with optional Chinese whole-word ``##`` marks."""

    def __init__(self, vocab_file: str, whole_word: bool = False, seg_func: str = "jieba", splited: bool = False,
                 split_dimer: str = " ", max_word_length: int = 4, append_eos: bool = False,
                 split_sentences="auto", tokenizer: str = "builtin"):
        self.vocab = load_vocab(vocab_file)
        self.whole_word = whole_word
        self.splited = splited
        self.split_dimer = split_dimer
        self.max_word_length = max_word_length
        self.split_sentences = split_mode(split_sentences)
        self.seg_func = seg_func
        self._segment = None
        if whole_word and not splited:
            if seg_func == "jieba":
                import jieba  # imported only when needed; LAC is never imported

                jieba.setLogLevel(logging.WARNING)
                jieba.initialize()
                self._segment = jieba.lcut
            elif seg_func != "none":
                raise InputError(f"unknown --cn-seg-func {seg_func!r} (jieba or none)")
        self.eos_id: Optional[int] = None
        if append_eos:
            for tok in ("[EOS]", "</s>", "[SEP]"):
                if tok in self.vocab.token_to_id and self.vocab.token_to_id[tok] < self.vocab.base_size:
                    self.eos_id = self.vocab.token_to_id[tok]
                    break
        if tokenizer == "builtin":
            self.tok = FastWordPieceTokenizer(self.vocab)
            self._encode_cjk = self.tok.encode_with_cjk
        elif tokenizer == "paddlenlp":
            self._encode_cjk = _paddlenlp_encoder(vocab_file, self.vocab)
        else:
            raise InputError(f"unknown --tokenizer {tokenizer!r} (builtin or paddlenlp)")

    def words(self, sentence: str) -> Optional[List[str]]:
        if not self.whole_word:
            return None
        if self.splited:
            return sentence.split(self.split_dimer)
        if self._segment is None:  # --cn-seg-func none: every character is its own word
            return None
        return self._segment(sentence)

    def encode_sentence(self, sentence: str) -> List[int]:
        ids, cjk_pos = self._encode_cjk(sentence)
        if cjk_pos:
            words = self.words(sentence)
            if words is not None:
                apply_whole_word_marks(ids, cjk_pos, whole_word_flags(words, self.max_word_length), self.vocab)
        return ids

    def splits(self, from_json: bool) -> bool:
        return self.split_sentences == "all" or (self.split_sentences == "auto" and from_json)

    def sentences(self, lines: Doc, split: Optional[bool] = None) -> Iterable[str]:
        if split is None:
            split = self.split_sentences == "all"
        for line in lines:
            line = line.strip()
            if not line:
                continue
            if split:
                for s in _SENT_SPLIT_RE.split(line):
                    s = s.strip()
                    if s:
                        yield s
            else:
                yield line

    def encode_batch(self, docs: List[Doc], dtype: str, from_json: Optional[List[bool]] = None
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (ids, sentence lengths, sentences per document) for a batch of documents."""
        all_ids: List[int] = []
        lens: List[int] = []
        doc_counts: List[int] = []
        for k, doc in enumerate(docs):
            n = 0
            last_len_index = -1
            for sentence in self.sentences(doc, self.splits(bool(from_json and from_json[k]))):
                ids = self.encode_sentence(sentence)
                if ids:
                    all_ids.extend(ids)
                    lens.append(len(ids))
                    last_len_index = len(lens) - 1
                    n += 1
            if n and self.eos_id is not None:
                all_ids.append(self.eos_id)
                lens[last_len_index] += 1
            if n:
                doc_counts.append(n)
        return (np.array(all_ids, dtype=dtype), np.array(lens, dtype=np.int32),
                np.array(doc_counts, dtype=np.int64))


def _paddlenlp_encoder(vocab_file: str, vocab):
    """ErnieTokenizer-based encoder (parity/benchmark path; imports paddle)."""
    import zlib  # noqa: F401  (paddle 2.6 import-order bug: zlib/numpy before paddle)

    from paddlenlp.transformers import ErnieTokenizer

    tk = ErnieTokenizer(vocab_file=vocab_file)
    t2i = vocab.token_to_id
    unk = vocab.unk_id

    def encode(sentence: str):
        toks = tk.tokenize(sentence)
        ids = [t2i.get(t, unk) for t in toks]
        cjk_pos = [i for i, t in enumerate(toks) if is_wwm_cjk_char(t)]
        return ids, cjk_pos

    return encode


_WORKER: Optional[Encoder] = None


def _preload(kwargs: dict) -> None:
    from .tokenizer import _char_classes

    _char_classes()
    if kwargs.get("whole_word") and not kwargs.get("splited") and kwargs.get("seg_func") == "jieba":
        import jieba

        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _init_worker(kwargs: dict) -> None:
    global _WORKER
    _WORKER = Encoder(**kwargs)


def _work(args: Tuple[List[Doc], List[bool], int, str]):
    docs, flags, nbytes, dtype = args
    assert _WORKER is not None
    ids, lens, counts = _WORKER.encode_batch(docs, dtype, flags)
    return ids, lens, counts, nbytes


# ---------------------------------------------------------------------------
# output


class NpyStreamWriter:
    """Writes a 1-D ``.npy`` of unknown length: fixed 128-byte header patched at close."""

    HEADER = 128

    def __init__(self, path: str, dtype: str):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._f = open(path, "wb")
        self._f.write(b"\0" * self.HEADER)

    def write(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self._f.write(arr.tobytes())
        self.count += arr.shape[0]

    def close(self) -> None:
        d = "{'descr': '%s', 'fortran_order': False, 'shape': (%d,), }" % (self.dtype.str, self.count)
        hlen = self.HEADER - 10
        if len(d) + 1 > hlen:  # pragma: no cover - would need > 10^90 tokens
            raise ValueError("npy header too long")
        header = b"\x93NUMPY\x01\x00" + struct.pack("<H", hlen) + (d + " " * (hlen - len(d) - 1) + "\n").encode()
        self._f.seek(0)
        self._f.write(header)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            if os.path.exists(self.path):
                os.unlink(self.path)


def _progress(total_bytes: int, enabled: Optional[bool]):
    from tqdm import tqdm

    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="tokenizing",
                file=sys.stderr, disable=disable, mininterval=0.5, smoothing=0.1)


def create_pretraining_data(inputs: Sequence[str], vocab_file: str, output_prefix: str, workers: int = 1,
                            json_key: str = "text", chinese: bool = False, cn_whole_word_segment: bool = False,
                            cn_seg_func: str = "jieba", cn_splited: bool = False, cn_split_dimer: str = " ",
                            append_eos: bool = False, split_sentences="auto", max_word_length: int = 4,
                            tokenizer: str = "builtin", progress: Optional[bool] = None,
                            log_interval_s: float = 30.0) -> dict:
    """Run the conversion; returns a summary dict. Raises InputError/VocabError on bad input."""
    t_start = time.time()
    vocab = load_vocab(vocab_file)  # fails early with a clear message
    vocab_digest = vocab.sha256  # of the file as read now; the workers read the same file
    files = [f for f in find_input_files(inputs) if not _same_file(f, vocab_file)]
    if not files:
        raise InputError("the only input file is the vocab file")
    if cn_whole_word_segment and cn_seg_func not in ("jieba", "none") and not cn_splited:
        raise InputError(f"unknown --cn-seg-func {cn_seg_func!r} (jieba or none)")
    split_sentences = split_mode(split_sentences)
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    dtype = vocab.ids_dtype_name()
    total_bytes = sum(os.path.getsize(f) for f in files)
    enc_kwargs = dict(vocab_file=vocab_file, whole_word=cn_whole_word_segment, seg_func=cn_seg_func,
                      splited=cn_splited, split_dimer=cn_split_dimer, max_word_length=max_word_length,
                      append_eos=append_eos, split_sentences=split_sentences, tokenizer=tokenizer)
    ids_path, idx_path = output_prefix + "_ids.npy", output_prefix + "_idx.npz"
    suffix = f".tmp.{os.getpid()}"
    writer = NpyStreamWriter(ids_path + suffix, dtype)
    lens_parts: List[np.ndarray] = []
    doc_parts: List[np.ndarray] = []
    done_bytes = 0
    pool = None
    try:
        batches = ((docs, flags, nb, dtype) for docs, flags, nb in iter_batches(files, json_key))
        if workers > 1:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            if method == "fork":  # load once here; the workers inherit it instead of each rebuilding it
                _preload(enc_kwargs)
            ctx = mp.get_context(method)
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=(enc_kwargs,))
            results = pool.imap(_work, batches, chunksize=1)
        else:
            _init_worker(enc_kwargs)
            results = map(_work, batches)
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
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        lens_all = np.concatenate(lens_parts) if lens_parts else np.zeros(0, np.int32)
        counts_all = np.concatenate(doc_parts) if doc_parts else np.zeros(0, np.int64)
        if counts_all.shape[0] == 0:
            raise InputError(f"no non-empty documents found in {len(files)} input file(s)")
        sents = np.zeros(lens_all.shape[0] + 1, dtype=np.int64)
        np.cumsum(lens_all, dtype=np.int64, out=sents[1:])
        docs = np.zeros(counts_all.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts_all, dtype=np.int64, out=docs[1:])
        writer.close()
        with open(idx_path + suffix, "wb") as f:
            np.savez(f, lens=lens_all.astype(np.int32), sents=sents, docs=docs,
                     **{CORPUS_VOCAB_KEY: np.array(vocab_digest), CORPUS_VOCAB_FILE_KEY: np.array(vocab.path)})
            f.flush()
            os.fsync(f.fileno())
        os.replace(ids_path + suffix, ids_path)
        os.replace(idx_path + suffix, idx_path)
    except BaseException:
        if pool is not None:
            pool.terminate()
            pool.join()
        writer.abort()
        if os.path.exists(idx_path + suffix):
            os.unlink(idx_path + suffix)
        raise
    elapsed = time.time() - t_start
    summary = {"ids": ids_path, "idx": idx_path, "dtype": dtype, "documents": int(docs.shape[0] - 1),
               "sentences": int(lens_all.shape[0]), "tokens": int(sents[-1]), "input_bytes": total_bytes,
               "seconds": round(elapsed, 3), "mb_per_s": round(total_bytes / 1e6 / max(elapsed, 1e-9), 3),
               "vocab_size": vocab.base_size, "id_space": vocab.size, "vocab_file": vocab.path,
               "vocab_sha256": vocab_digest, "split_sentences": split_sentences,
               "single_sentence_documents": int(np.count_nonzero(counts_all == 1))}
    return summary


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


if __name__ == "__main__":
    sys.exit(main())
