"""`python -m ernie_cluster pretrained NAME --out DIR`: a verified local copy of a PaddleNLP built-in model.

On a machine that reaches PaddleNLP's hosting, this downloads through PaddleNLP itself
(`ErnieForPretraining.from_pretrained(NAME)`, or `ErnieModel` when the published file has no
pretraining heads, and `ErnieTokenizer.from_pretrained(NAME)`, both through PaddleNLP's cache) and
writes a complete model directory that training can start from without any network:

    DIR/model_state.pdparams   config.json   vocab.txt   tokenizer_config.json   special_tokens_map.json
    DIR/MANIFEST.json          size + sha256 of every file, the source, tensor count and checksum

`verify_manifest(DIR)` checks a directory against its MANIFEST.json; the trainer calls it (through
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
from pathlib import Path
from typing import Any, Dict, List, Optional

from .durable import fsync_dir, fsync_file, replace_dir, sha256_file
from .weights import (CONFIG_NAMES, ENCODER_PREFIX, ERNIE_TIES, HEADS_PREFIX, LEGACY_CACHE_WEIGHTS, LEGACY_TIED_KEYS,
                      MANIFEST_NAME, PADDLE_WEIGHTS_NAME, SAFE_WEIGHTS_NAME, TOKENIZER_FILES, VOCAB_NAME)

MANIFEST_FORMAT = 1
MANIFEST_KIND = "pretrained"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class ManifestError(RuntimeError):
    """A model directory does not match its MANIFEST.json (the message names the file)."""


class FetchError(RuntimeError):
    """The model could not be fetched or written."""


class UnknownModel(FetchError):
    pass


# ---------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------


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
    problems: List[str] = []
    for name, meta in sorted(files.items()):
        f = directory / name
        if not f.is_file():
            problems.append(f"{f} is listed in {MANIFEST_NAME} but missing")
            continue
        size = f.stat().st_size
        if size != meta.get("size"):
            problems.append(f"{f} has {size} bytes, {MANIFEST_NAME} says {meta.get('size')}: it was modified")
            continue
        if full:
            digest = sha256_file(f)
            if digest != meta.get("sha256"):
                problems.append(f"{f} has sha256 {digest[:16]}..., {MANIFEST_NAME} says "
                                f"{str(meta.get('sha256'))[:16]}...: it was modified after it was written")
    unlisted = sorted(f.name for f in directory.iterdir()
                      if f.is_file() and f.name not in files and f.name != MANIFEST_NAME and _model_file(f.name))
    if unlisted:
        problems.append(f"{', '.join(str(directory / n) for n in unlisted)} not listed in {MANIFEST_NAME}: "
                        f"added after the directory was written")
    if problems:
        raise ManifestError(f"{directory} does not match its {MANIFEST_NAME}:\n  " + "\n  ".join(problems))
    return manifest


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
    import paddlenlp
    from paddlenlp.transformers import ErnieConfig, ErnieForPretraining, ErnieModel, ErnieTokenizer

    from .weights import tensor_checksum

    known = ErnieModel.pretrained_init_configuration
    if name not in known:
        ernie1 = sorted(n for n in known if n.startswith("ernie-1.0"))
        raise UnknownModel(f"{name!r} is not a PaddleNLP built-in ERNIE model (ERNIE 1.0: {', '.join(ernie1)})")
    root = _cache_root(cache_arg)
    cached = root / name
    legacy = cached / LEGACY_CACHE_WEIGHTS.get(name, "-")
    paddle.disable_static()
    t0 = time.time()
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
        has_heads = any(k.startswith(HEADS_PREFIX) for k in raw)
        model_cls = ErnieForPretraining if has_heads else ErnieModel
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
    state = {k: np.asarray(v.numpy()) for k, v in model.state_dict().items()}
    problems = _compare_to_source(state, raw, weights_file)
    if problems:
        raise FetchError(f"{model_cls.__name__}.from_pretrained({name!r}) did not reproduce the cached weights:\n  "
                         + "\n  ".join(problems[:20]))
    vocab_src = Path(getattr(tokenizer, "init_kwargs", {}).get("vocab_file") or cached / VOCAB_NAME)
    if vocab_bytes is None:
        if not vocab_src.is_file():
            raise FetchError(f"the tokenizer of {name} has no vocab file (looked for {vocab_src})")
        vocab_bytes = vocab_src.read_bytes()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp.{out.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / VOCAB_NAME).write_bytes(vocab_bytes)  # verbatim: the tokenizer rewrites it from its own table
        if (tmp / SAFE_WEIGHTS_NAME).exists() or not (tmp / PADDLE_WEIGHTS_NAME).is_file():
            raise FetchError(f"save_pretrained did not write {PADDLE_WEIGHTS_NAME} into {tmp}")
        saved = paddle.load(str(tmp / PADDLE_WEIGHTS_NAME), return_numpy=True)
        saved.pop("StructuredToParameterName@@", None)
        distinct = [k for k in saved if not (k in ERNIE_TIES and ERNIE_TIES[k] in saved)]
        n_params = int(sum(np.asarray(saved[k]).size for k in distinct))
        url = (getattr(ErnieForPretraining, "pretrained_resource_files_map", {}).get("model_state", {}).get(name))
        extra = {
            "kind": MANIFEST_KIND, "name": name, "model_class": model_cls.__name__, "heads_in_source": has_heads,
            "source": {"weights": str(weights_file), "weights_sha256": sha256_file(weights_file),
                       "vocab": str(vocab_src), "vocab_sha256": hashlib.sha256(vocab_bytes).hexdigest(), "url": url},
            "tensors": {"count": len(distinct), "parameters": n_params, "checksum": tensor_checksum(saved)},
            "paddle_version": paddle.__version__, "paddlenlp_version": getattr(paddlenlp, "__version__", None),
        }
        manifest = write_manifest(tmp, extra)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    verify_manifest(out)
    say(f"{name} -> {out}: {model_cls.__name__}, {len(distinct)} tensors, {n_params:,} parameters, "
        f"heads {'included' if has_heads else 'absent in the source'} ({time.time() - t0:.1f}s)")
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
