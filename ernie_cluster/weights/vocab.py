"""Which vocab a run uses, and refusing one that does not belong to the weights or the corpus.

Standard library only, numpy when a tokenized corpus is read (its recorded ``vocab_sha256``).  What a corpus
is and how it records its vocab has one home, ``data_tools`` (``vocab`` / ``indexed``); this module uses theirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from data_tools.vocab import CORPUS_VOCAB_KEY, tokens_sha256  # the key: an array in <prefix>_idx.npz

from .names import VOCAB_NAME, WeightsError

if TYPE_CHECKING:
    from .layouts import ModelSource


def read_vocab_tokens(path: Path) -> List[str]:
    """One token per line, the line number is the id (paddlenlp's ``Vocab.load_vocabulary`` rule)."""
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
    except FileNotFoundError:
        raise WeightsError(f"vocab file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"vocab file {path}: cannot read it ({exc})") from None
    if not tokens:
        raise WeightsError(f"vocab file {path} is empty")
    return tokens


def vocab_digest(path: Path) -> str:
    """sha256 of the token list ('\\n'.join(tokens), UTF-8): equal for files with the same token -> id map.

    The same definition must be used where a corpus records its vocab (``vocab_sha256`` in ``_idx.npz``).
    """
    return tokens_sha256(read_vocab_tokens(path))


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at line {i + 1}: {x!r} vs {y!r}"
    return f"one has {len(a)} tokens, the other {len(b)}"


@dataclass
class VocabCheck:
    vocab_file: Path
    sha256: str
    size: int
    model_vocab_file: Optional[Path]
    corpora: List[Tuple[str, str]] = field(default_factory=list)  # (idx file, "match" | "unrecorded")

    def summary(self) -> str:
        unrec = [c for c, s in self.corpora if s == "unrecorded"]
        text = f"vocab {self.vocab_file} ({self.size} tokens, sha256 {self.sha256[:12]})"
        if self.corpora:
            text += f"; corpus: {len(self.corpora) - len(unrec)} match"
            if unrec:
                text += f", {len(unrec)} record no vocab ({', '.join(unrec)})"
        return text


def corpus_idx_files(prefix: str | os.PathLike) -> List[Path]:
    """``<prefix>_idx.npz``, or for a directory every ``<name>_idx.npz`` with its ``_ids.npy`` (name order).

    The corpora are the ones ``data_tools.indexed.corpus_prefixes`` finds (what training reads); a directory with
    none in it gives no file here (nothing to check) instead of its DataError.
    """
    from data_tools.errors import DataError
    from data_tools.indexed import corpus_prefixes  # imports numpy: only when a corpus is checked

    try:
        prefixes = corpus_prefixes(os.fspath(prefix))
    except DataError:
        return []
    return [Path(p + "_idx.npz") for p in prefixes]


def corpus_vocab_digest(idx_file: Path) -> Optional[str]:
    """The vocab digest a tokenized corpus recorded (None when it recorded none), read as ``data_tools`` reads it."""
    if not idx_file.is_file():
        raise WeightsError(f"corpus index {idx_file} does not exist")
    import numpy as np
    # private in data_tools (no public reader of one npz record yet); IndexedDataset reads vocab_sha256 with it
    from data_tools.indexed import npz_string

    try:
        with np.load(idx_file, allow_pickle=False) as z:
            return npz_string(z, CORPUS_VOCAB_KEY, str(idx_file))
    except (OSError, ValueError) as exc:  # DataError (a ValueError) too: a record that is not one string
        raise WeightsError(f"corpus index {idx_file}: cannot read it ({exc})") from None


def _check_against_model(chosen: Path, tokens: List[str], model_source: Optional[ModelSource],
                         vocab_file: Optional[str | os.PathLike]) -> None:
    """Refuse a given vocab whose tokens differ from the model directory's, or one larger than its vocab_size."""
    model_vocab = model_source.vocab_file if model_source is not None else None
    if model_vocab is not None and vocab_file is not None and Path(vocab_file).resolve() != model_vocab.resolve():
        model_tokens = read_vocab_tokens(model_vocab)
        if model_tokens != tokens:
            raise WeightsError(
                f"vocab mismatch: {chosen} ({len(tokens)} tokens) differs from the model's {model_vocab} "
                f"({len(model_tokens)} tokens), {_first_difference(tokens, model_tokens)}; token ids would "
                f"point at the wrong embeddings. Use the model's vocab (drop data.vocab_file) or a model trained with it")
    model_vocab_size = model_source.config.get("vocab_size") if model_source is not None else None
    if isinstance(model_vocab_size, int) and len(tokens) > model_vocab_size:
        raise WeightsError(f"vocab size mismatch: {chosen} has {len(tokens)} tokens but {model_source.config_origin} "
                           f"says vocab_size {model_source.config['vocab_size']}")


def _check_corpora(result: VocabCheck, corpus_prefix: str | os.PathLike) -> None:
    """Each tokenized corpus under `corpus_prefix` that recorded its vocab must have used `result`'s."""
    chosen, digest = result.vocab_file, result.sha256
    for idx in corpus_idx_files(corpus_prefix):
        recorded = corpus_vocab_digest(idx)
        if recorded is None:
            result.corpora.append((str(idx), "unrecorded"))
        elif recorded != digest:
            raise WeightsError(f"vocab mismatch: the corpus {idx} was tokenized with a vocab of sha256 "
                               f"{recorded[:12]}..., not {chosen} (sha256 {digest[:12]}...); re-tokenize it "
                               f"with {chosen} or use the vocab it was built with")
        else:
            result.corpora.append((str(idx), "match"))


def check_vocab(model_source: Optional[ModelSource], vocab_file: Optional[str | os.PathLike] = None,
                corpus_prefix: Optional[str | os.PathLike] = None) -> VocabCheck:
    """Which vocab the run uses, refusing mismatches. Paddle-free (numpy only for a corpus).

    * default: the model directory's vocab.txt;
    * a given `vocab_file` whose tokens differ from the model directory's vocab.txt is refused,
      naming both files (the same tokens in another file are fine);
    * a vocab larger than the model's ``vocab_size`` is refused;
    * each tokenized corpus under `corpus_prefix` that recorded its vocab must match it
      (a corpus tokenized before the digest was recorded is reported as "unrecorded").
    """
    model_vocab = model_source.vocab_file if model_source is not None else None
    chosen = Path(vocab_file) if vocab_file is not None else model_vocab
    if chosen is None:
        where = f"{model_source.path} has no {VOCAB_NAME}" if model_source is not None else "no model directory"
        raise WeightsError(f"no vocab: {where}; set data.vocab_file to the vocab the model was trained with")
    tokens = read_vocab_tokens(chosen)
    _check_against_model(chosen, tokens, model_source, vocab_file)
    result = VocabCheck(vocab_file=chosen, sha256=tokens_sha256(tokens), size=len(tokens), model_vocab_file=model_vocab)
    if corpus_prefix is not None:
        _check_corpora(result, corpus_prefix)
    return result
