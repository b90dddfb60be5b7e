"""`python -m ernie_cluster pretrained NAME --out DIR`: a verified local copy of a PaddleNLP built-in model.

On a machine that reaches PaddleNLP's hosting, this downloads through PaddleNLP itself
(`ErnieForPretraining.from_pretrained(NAME)`, or `ErnieModel` when the published file has no
pretraining heads, and `ErnieTokenizer.from_pretrained(NAME)`, both through PaddleNLP's cache) and
writes a complete model directory that training can start from without any network:

    DIR/model_state.pdparams   config.json   vocab.txt   tokenizer_config.json   special_tokens_map.json
    DIR/MANIFEST.json          size + sha256 of every file, the source, tensor count and checksum

`verify_manifest(DIR)` (home: ``weights/manifest.py``, importable from here too) checks a directory
against its MANIFEST.json; ``validate`` checks sizes, the trainer every sha256 (through
`weights.load_starting_weights`) before it uses the weights.

PaddleNLP 2.8.1's cache (``$PPNLP_HOME/models``, ``~/.paddlenlp/models`` by default; read once, when
paddlenlp is imported; `cache_dir=` overrides it per call): a built-in name's weights are cached as
``<cache>/<name>/model_state.pdparams`` and its vocab as ``<cache>/<name>/vocab.txt``. With those files
present from_pretrained opens no connection (``bos_download`` returns the cached file before any
request). Older releases cached the weights under the URL's name (``ernie_v1_chn_base.pdparams``),
which 2.8.1 does not look for; such a cache is loaded from that file directly.

Importing this module imports neither paddle nor numpy (the CLI's other commands stay light).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .durable import replace_dir, sha256_file
from .weights import (ENCODER_PREFIX, ERNIE_TIES, HEADS_PREFIX, LEGACY_CACHE_WEIGHTS, LEGACY_TIED_KEYS,
                      PADDLE_WEIGHTS_NAME, SAFE_WEIGHTS_NAME, VOCAB_NAME, tensor_checksum)
# the manifest's home is weights.manifest; these names stay importable from here
from .weights.manifest import (MANIFEST_FORMAT, MANIFEST_KIND, ManifestError, verify_manifest,  # noqa: F401
                               write_manifest)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class FetchError(RuntimeError):
    """The model could not be fetched or written."""


class UnknownModel(FetchError):
    pass


# ---------------------------------------------------------------------------
# fetching through PaddleNLP
# ---------------------------------------------------------------------------


def _cache_root(cache_dir: Optional[str | os.PathLike]) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from paddlenlp.utils.env import MODEL_HOME  # $PPNLP_HOME/models, fixed when paddlenlp is imported

    return Path(MODEL_HOME)


def _resolved_weights(model_cls, name: str, cache_dir: Optional[str]) -> Path:
    """The file from_pretrained loads for a built-in name (downloading it when it is not cached)."""
    resolve = getattr(model_cls, "_resolve_model_file_path", None)
    if resolve is not None:
        resolved = resolve(name, cache_dir=cache_dir)
        path = resolved[0] if isinstance(resolved, tuple) else resolved
        if path and Path(path).is_file():
            return Path(path)
    path = _cache_root(cache_dir) / name / PADDLE_WEIGHTS_NAME
    if not path.is_file():
        raise FetchError(f"PaddleNLP resolved no weights file for {name} (expected {path})")
    return path


def _compare_to_source(state: Dict[str, Any], raw: Dict[str, Any], source: Path) -> List[str]:
    """Every source tensor must be in the loaded model with the same value (from_pretrained only warns)."""
    import numpy as np

    problems = []
    for key, value in raw.items():
        if key in state:
            target = key
        elif key.startswith(ENCODER_PREFIX) and key[len(ENCODER_PREFIX):] in state:
            target = key[len(ENCODER_PREFIX):]
        elif ENCODER_PREFIX + key in state:
            target = ENCODER_PREFIX + key
        elif key in LEGACY_TIED_KEYS:
            tied = LEGACY_TIED_KEYS[key]
            target = next((t for t in (tied, tied[len(ENCODER_PREFIX):]) if t in state), None)
        else:
            target = None
        if target is None:
            problems.append(f"{key} (in {source}) was not loaded by from_pretrained")
        elif np.shape(value) != np.shape(state[target]) or not np.array_equal(np.asarray(value), state[target]):
            problems.append(f"{key} (in {source}) differs from the loaded model's {target}")
    return problems


@dataclass
class _Fetched:
    """What PaddleNLP gave for a built-in name: the file it read, its tensors, the model and tokenizer it built."""

    weights_file: Path
    raw: Dict[str, Any]
    model_cls: Any              # ErnieForPretraining, or ErnieModel when the file has no pretraining heads
    model: Any
    tokenizer: Any
    vocab_bytes: Optional[bytes]  # the cached vocab.txt as it was before the tokenizer saved its own

    @property
    def has_heads(self) -> bool:
        return any(k.startswith(HEADS_PREFIX) for k in self.raw)


def _through_paddlenlp(name: str, cached: Path, cache_arg: Optional[str], say) -> _Fetched:
    """from_pretrained of the model and the tokenizer; any failure is a FetchError naming the cache."""
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieForPretraining, ErnieModel, ErnieTokenizer

    legacy = cached / LEGACY_CACHE_WEIGHTS.get(name, "-")
    # PaddleNLP's from_pretrained takes a directory named like the model in the current directory before the
    # built-in name (`_resolve_model_file_path` checks os.path.isdir(name) first): an earlier `--out NAME`
    # would be read back instead of the cache. Resolve from an empty directory instead.
    cwd = os.getcwd()
    scratch = Path(tempfile.mkdtemp(prefix="ernie_cluster_pretrained_"))
    os.chdir(scratch)
    try:
        if not (cached / PADDLE_WEIGHTS_NAME).is_file() and legacy.is_file():
            say(f"{cached}: an older PaddleNLP cache ({legacy.name}); loading it directly")
            weights_file = legacy
            load_from, load_kwargs = str(legacy), {"config": ErnieConfig.from_pretrained(name)}
        else:
            say(f"getting {name} through PaddleNLP (cache {cached})")
            weights_file = _resolved_weights(ErnieForPretraining, name, cache_arg)
            load_from, load_kwargs = name, {"cache_dir": cache_arg}
        raw = paddle.load(str(weights_file), return_numpy=True)
        raw.pop("StructuredToParameterName@@", None)
        model_cls = ErnieForPretraining if any(k.startswith(HEADS_PREFIX) for k in raw) else ErnieModel
        model = model_cls.from_pretrained(load_from, **load_kwargs)
        # from_pretrained of a built-in tokenizer saves its files into the cache directory: keep the cached
        # vocab's bytes as they were before (the line number is the token id).
        cached_vocab = cached / VOCAB_NAME
        vocab_bytes = cached_vocab.read_bytes() if cached_vocab.is_file() else None
        tokenizer = ErnieTokenizer.from_pretrained(name, cache_dir=cache_arg)
    except FetchError:
        raise
    except Exception as exc:  # noqa: BLE001 - network, cache and format errors all end here
        raise FetchError(f"could not get {name} through PaddleNLP (cache {cached}): {type(exc).__name__}: {exc}. "
                         f"Run this where PaddleNLP's hosting is reachable, or copy a populated {cached} "
                         f"(model_state.pdparams and vocab.txt) to this machine") from None
    finally:
        os.chdir(cwd)
        shutil.rmtree(scratch, ignore_errors=True)
    return _Fetched(weights_file, raw, model_cls, model, tokenizer, vocab_bytes)


def _vocab(got: _Fetched, name: str, cached: Path) -> Tuple[Path, bytes]:
    """(where the vocab came from, its bytes): the cached vocab.txt as it was, else the tokenizer's file."""
    vocab_src = Path(getattr(got.tokenizer, "init_kwargs", {}).get("vocab_file") or cached / VOCAB_NAME)
    if got.vocab_bytes is not None:
        return vocab_src, got.vocab_bytes
    if not vocab_src.is_file():
        raise FetchError(f"the tokenizer of {name} has no vocab file (looked for {vocab_src})")
    return vocab_src, vocab_src.read_bytes()


def _write_model_dir(out: Path, name: str, got: _Fetched, vocab_src: Path, vocab_bytes: bytes
                     ) -> Tuple[Dict[str, Any], int, int]:
    """save_pretrained into a temporary sibling, MANIFEST.json last, then swapped in for `out`.

    Returns (manifest, distinct tensors, parameters); nothing is left behind when it fails."""
    import numpy as np
    import paddle
    import paddlenlp
    from paddlenlp.transformers import ErnieForPretraining

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp.{out.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        got.model.save_pretrained(str(tmp))
        got.tokenizer.save_pretrained(str(tmp))
        (tmp / VOCAB_NAME).write_bytes(vocab_bytes)  # verbatim: the tokenizer rewrites it from its own table
        if (tmp / SAFE_WEIGHTS_NAME).exists() or not (tmp / PADDLE_WEIGHTS_NAME).is_file():
            raise FetchError(f"save_pretrained did not write {PADDLE_WEIGHTS_NAME} into {tmp}")
        saved = paddle.load(str(tmp / PADDLE_WEIGHTS_NAME), return_numpy=True)
        saved.pop("StructuredToParameterName@@", None)
        distinct = [k for k in saved if not (k in ERNIE_TIES and ERNIE_TIES[k] in saved)]
        n_params = int(sum(np.asarray(saved[k]).size for k in distinct))
        url = (getattr(ErnieForPretraining, "pretrained_resource_files_map", {}).get("model_state", {}).get(name))
        extra = {
            "kind": MANIFEST_KIND, "name": name, "model_class": got.model_cls.__name__,
            "heads_in_source": got.has_heads,
            "source": {"weights": str(got.weights_file), "weights_sha256": sha256_file(got.weights_file),
                       "vocab": str(vocab_src), "vocab_sha256": hashlib.sha256(vocab_bytes).hexdigest(), "url": url},
            "tensors": {"count": len(distinct), "parameters": n_params, "checksum": tensor_checksum(saved)},
            "paddle_version": paddle.__version__, "paddlenlp_version": getattr(paddlenlp, "__version__", None),
        }
        manifest = write_manifest(tmp, extra)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, len(distinct), n_params


def fetch_pretrained(name: str, out_dir: str | os.PathLike, *, cache_dir: Optional[str | os.PathLike] = None,
                     force: bool = False, log=None) -> Dict[str, Any]:
    """Download (or take from PaddleNLP's cache) built-in model `name` and write a verified model directory.

    Returns the manifest written to ``out_dir/MANIFEST.json``. Raises UnknownModel for a name PaddleNLP does
    not know, FetchError when downloading, loading or writing fails (nothing is left at `out_dir` then).
    """
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FetchError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    cache_arg = str(Path(cache_dir).expanduser().resolve()) if cache_dir is not None else None
    import numpy as np  # noqa: F401 - numpy before paddle (paddle 2.6 import-order bug)
    import paddle
    from paddlenlp.transformers import ErnieModel

    known = ErnieModel.pretrained_init_configuration
    if name not in known:
        ernie1 = sorted(n for n in known if n.startswith("ernie-1.0"))
        raise UnknownModel(f"{name!r} is not a PaddleNLP built-in ERNIE model (ERNIE 1.0: {', '.join(ernie1)})")
    cached = _cache_root(cache_arg) / name
    paddle.disable_static()
    t0 = time.time()
    got = _through_paddlenlp(name, cached, cache_arg, say)
    state = {k: np.asarray(v.numpy()) for k, v in got.model.state_dict().items()}
    problems = _compare_to_source(state, got.raw, got.weights_file)
    if problems:
        raise FetchError(f"{got.model_cls.__name__}.from_pretrained({name!r}) did not reproduce the cached weights:"
                         f"\n  " + "\n  ".join(problems[:20]))
    vocab_src, vocab_bytes = _vocab(got, name, cached)
    manifest, n_tensors, n_params = _write_model_dir(out, name, got, vocab_src, vocab_bytes)
    verify_manifest(out)
    say(f"{name} -> {out}: {got.model_cls.__name__}, {n_tensors} tensors, {n_params:,} parameters, "
        f"heads {'included' if got.has_heads else 'absent in the source'} ({time.time() - t0:.1f}s)")
    return manifest


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="PaddleNLP built-in model name, e.g. ernie-1.0-base-zh")
    p.add_argument("--out", required=True, help="directory to write (model_state.pdparams, config.json, vocab.txt, "
                                                "tokenizer files, MANIFEST.json)")
    p.add_argument("--cache-dir", help="PaddleNLP cache to use instead of $PPNLP_HOME/models")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        manifest = fetch_pretrained(args.name, args.out, cache_dir=args.cache_dir, force=args.force)
    except UnknownModel as exc:
        print(f"pretrained: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (FetchError, ManifestError) as exc:
        print(f"pretrained: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        print(f"{args.out}: {manifest['model_class']} {manifest['name']}, {manifest['tensors']['count']} tensors, "
              f"sha256 {manifest['tensors']['checksum'][:16]}; start a run from it with "
              f"model.model_name_or_path: {Path(args.out).resolve()}")
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ernie_cluster pretrained",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
