"""MANIFEST.json of a model directory: size and sha256 of every file, written last, verified before use.

The ``pretrained`` command writes one (`write_manifest`); `verify_manifest` checks a directory against
it: the spec (sizes only) and `load_starting_weights` (every sha256) before a run uses the weights.
Standard library only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..durable import fsync_dir, fsync_file, sha256_file
from .names import CONFIG_NAMES, MANIFEST_NAME, TOKENIZER_FILES

MANIFEST_FORMAT = 1
MANIFEST_KIND = "pretrained"  # "kind" of the pretrained command's manifest (layouts.py calls its output that)


class ManifestError(RuntimeError):
    """A model directory does not match its MANIFEST.json (the message names the file)."""


def _model_file(name: str) -> bool:
    """Files whose change would change what a run starts from (an unlisted one is refused)."""
    return (name in CONFIG_NAMES or name in TOKENIZER_FILES or name.endswith((".pdparams", ".safetensors"))
            or name.endswith(".index.json"))


def write_manifest(directory: Path, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """MANIFEST.json listing size and sha256 of every regular file in `directory` (written last, fsynced)."""
    directory = Path(directory)
    files = {}
    for f in sorted(directory.iterdir()):
        if f.is_file() and f.name != MANIFEST_NAME and not f.name.startswith("."):
            files[f.name] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
            fsync_file(f)
    manifest = {"format": MANIFEST_FORMAT, **(extra or {}), "files": files,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = directory / f".{MANIFEST_NAME}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / MANIFEST_NAME)
    fsync_dir(directory)
    return manifest


def _file_problem(f: Path, meta: Dict[str, Any], full: bool) -> Optional[str]:
    """What is wrong with one listed file (missing, another size, another sha256), or None."""
    if not f.is_file():
        return f"{f} is listed in {MANIFEST_NAME} but missing"
    size = f.stat().st_size
    if size != meta.get("size"):
        return f"{f} has {size} bytes, {MANIFEST_NAME} says {meta.get('size')}: it was modified"
    if full:
        digest = sha256_file(f)
        if digest != meta.get("sha256"):
            return (f"{f} has sha256 {digest[:16]}..., {MANIFEST_NAME} says "
                    f"{str(meta.get('sha256'))[:16]}...: it was modified after it was written")
    return None


def verify_manifest(directory: str | os.PathLike, *, full: bool = True) -> Dict[str, Any]:
    """Check every file listed in DIR/MANIFEST.json (presence, size, sha256 unless `full=False`) and that
    no model file (weights, config, vocab, tokenizer) is there unlisted. Returns the manifest."""
    directory = Path(directory)
    mpath = directory / MANIFEST_NAME
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{mpath} is missing: {directory} was not written completely (or not by this tool)") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{mpath} is unreadable: {exc}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise ManifestError(f"{mpath} lists no files")
    problems: List[str] = [p for name, meta in sorted(files.items())
                           if (p := _file_problem(directory / name, meta, full)) is not None]
    unlisted = sorted(f.name for f in directory.iterdir()
                      if f.is_file() and f.name not in files and f.name != MANIFEST_NAME and _model_file(f.name))
    if unlisted:
        problems.append(f"{', '.join(str(directory / n) for n in unlisted)} not listed in {MANIFEST_NAME}: "
                        f"added after the directory was written")
    if problems:
        raise ManifestError(f"{directory} does not match its {MANIFEST_NAME}:\n  " + "\n  ".join(problems))
    return manifest
