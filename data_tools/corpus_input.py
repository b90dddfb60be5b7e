"""Corpus input of ``create_pretraining_data``: which files, and their documents in batches.

Input paths are files or directories (searched recursively for *.txt, *.text,
*.jsonl, *.json and their .gz).  ``.jsonl``/``.json`` files hold one
``{"text": ...}`` document per line; other files are raw text with documents
separated by blank lines and one sentence per line.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from typing import Iterator, List, Sequence, Tuple

TEXT_SUFFIXES = (".txt", ".text", ".jsonl", ".json")
JSON_SUFFIXES = (".jsonl", ".json")


class InputError(ValueError):
    """Bad command line input (missing files, nothing to read, ...)."""


def find_input_files(paths: Sequence[str]) -> List[str]:
    """The files to read, in order: each file as given, each directory's text files in sorted walk order."""
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


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (False when either cannot be read)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


__all__ = ["TEXT_SUFFIXES", "JSON_SUFFIXES", "Doc", "InputError", "find_input_files", "iter_documents", "iter_batches",
           "same_file"]
