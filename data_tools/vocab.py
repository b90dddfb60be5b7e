"""ERNIE/BERT vocabulary handling shared by the corpus tool and the dataset.

Pure Python (no numpy, no paddle) so that every other module can import it
cheaply.  A vocabulary file has one token per line; the line number is the id
(the same rule as ``paddlenlp.data.Vocab.load_vocabulary``).

For whole-word masking the corpus tool marks the 2nd..nth character of a
Chinese word with a ``##`` prefix (the masking reads the words from those
marks).  When the vocabulary has no ``##X`` entry for a CJK character ``X``
(many Chinese vocabularies lack them), the id space is *extended*
deterministically: ``##X`` gets id ``base_size + k`` where ``k`` counts such
characters in vocabulary order.  The corpus tool writes those extended ids and
the dataset maps them back to the plain character before the model sees them,
so the embedding table never has to grow (the reference does the same through
``ErnieTokenizer.extend_chinese_char``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Dict, List

PAD, CLS, SEP, MASK, UNK = "[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"
SPECIAL_TOKENS = (PAD, CLS, SEP, MASK, UNK)

# The reference marks whole words only on characters in this range
# (``[\u4E00-\u9FA5]`` in ``get_whole_word_mask_tokens``/``extend_chinese_char``).
CJK_LO, CJK_HI = "\u4e00", "\u9fa5"

# Arrays (0-d strings) of ``<prefix>_idx.npz`` that record which vocabulary produced the ids; corpora written
# before they existed, or by the reference tool, lack them.  ``ernie_cluster.weights`` reads the first one.
CORPUS_VOCAB_KEY = "vocab_sha256"     # vocab_sha256() of the vocab file
CORPUS_VOCAB_FILE_KEY = "vocab_file"  # its absolute path when the corpus was written (for messages only)


def is_wwm_cjk_char(ch: str) -> bool:
    """True for a single character that whole-word marking applies to."""
    return len(ch) == 1 and CJK_LO <= ch <= CJK_HI


class VocabError(ValueError):
    """The vocabulary file is missing, empty or lacks a required token."""


@dataclass
class Vocab:
    """Token <-> id tables, including the ``##CJK`` extension."""

    path: str
    tokens: List[str]                 # index = id, base vocabulary then extension
    base_size: int                    # number of lines of the vocab file
    token_to_id: Dict[str, int] = field(repr=False)

    @property
    def size(self) -> int:
        """Size of the id space written by the corpus tool (base + extension)."""
        return len(self.tokens)

    @property
    def pad_id(self) -> int:
        return self.token_to_id[PAD]

    @property
    def cls_id(self) -> int:
        return self.token_to_id[CLS]

    @property
    def sep_id(self) -> int:
        return self.token_to_id[SEP]

    @property
    def mask_id(self) -> int:
        return self.token_to_id[MASK]

    @property
    def unk_id(self) -> int:
        return self.token_to_id[UNK]

    def continuation_id(self, char_id: int) -> int:
        """Id of ``##X`` for the id of a CJK character ``X`` (else ``char_id``)."""
        tok = self.tokens[char_id]
        if not is_wwm_cjk_char(tok):
            return char_id
        return self.token_to_id.get("##" + tok, char_id)

    @property
    def sha256(self) -> str:
        """:func:`vocab_sha256` of the file this vocabulary was read from (the base tokens only)."""
        return tokens_sha256(self.tokens[: self.base_size])

    def ids_dtype_name(self) -> str:
        """numpy dtype name for the ids file: uint16 when every id fits."""
        return "uint16" if self.size < 65535 else "int32"


def read_vocab_tokens(path: str) -> List[str]:
    if not path or not os.path.isfile(path):
        raise VocabError(f"vocab file not found: {path!r} (pass --vocab-file with a local vocab.txt; "
                         "nothing is downloaded)")
    with open(path, "r", encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    if not tokens:
        raise VocabError(f"vocab file is empty: {path}")
    return tokens


def tokens_sha256(tokens: List[str]) -> str:
    """sha256 (hex) of ``"\\n".join(tokens)`` in UTF-8: the identity of a token -> id map."""
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()


def vocab_sha256(path: str) -> str:
    """Digest of a vocab file's token list, the same as ``ernie_cluster.weights.vocab_digest``.

    The file is read as :func:`read_vocab_tokens` reads it (text mode, so CRLF and a trailing newline do not
    matter), hence two files with the same tokens in the same order have the same digest.  The corpus tool
    records it in ``<prefix>_idx.npz`` as ``vocab_sha256``.
    """
    return tokens_sha256(read_vocab_tokens(path))


def load_vocab(path: str, extend_chinese: bool = True) -> Vocab:
    """Load ``path`` and (by default) append the ``##CJK`` extension."""
    tokens = read_vocab_tokens(path)
    token_to_id: Dict[str, int] = {}
    for i, tok in enumerate(tokens):
        token_to_id[tok] = i          # a duplicated line: the later id wins, as in paddlenlp
    missing = [t for t in SPECIAL_TOKENS if t not in token_to_id]
    if missing:
        raise VocabError(f"vocab file {path} lacks special token(s) {missing}; an ERNIE vocab starts with "
                         f"{' '.join(SPECIAL_TOKENS)}")
    base = len(tokens)
    all_tokens = list(tokens)
    if extend_chinese:
        for tok in tokens:
            if is_wwm_cjk_char(tok):
                cont = "##" + tok
                if cont not in token_to_id:
                    token_to_id[cont] = len(all_tokens)
                    all_tokens.append(cont)
    return Vocab(path=os.path.abspath(path), tokens=all_tokens, base_size=base, token_to_id=token_to_id)
