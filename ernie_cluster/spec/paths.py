"""The files a spec names: relative paths are from the submitting directory; what must exist here before a
spec is accepted (`validate`, `submit`; warnings under `render`), and freezing the paths for the compute nodes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from .architectures import BUILTIN_MODELS, is_builtin
from .problems import SpecProblem
from .reading import line_for

if TYPE_CHECKING:
    from .job import JobSpec


def abs_path(value: str) -> Path:
    """`value` with ~ expanded, relative to the current directory; not resolved (symlinks stay)."""
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = Path.cwd() / p
    return p


def local_model_path(name: str) -> Optional[Path]:
    """The model directory (or the reference scripts' ``static_vars`` prefix) `name` names on this machine, or None."""
    if is_builtin(name):
        return None
    p = abs_path(name)
    if p.is_dir() or Path(f"{p}.pdparams").is_file() or (p.is_file() and p.name == "static_vars.pdparams"):
        return p
    return None


def path_problems(spec: JobSpec, lines: Dict[str, int]) -> List[SpecProblem]:
    """The corpus, raw text, vocab and model directory the spec names but this machine lacks."""
    problems = []
    d = spec.data
    prefix = abs_path(d.input_prefix)
    has_ids = Path(f"{prefix}_ids.npy").exists() and Path(f"{prefix}_idx.npz").exists()
    if prefix.is_dir():  # a directory of corpora: every <name>_ids.npy + <name>_idx.npz pair in it
        pairs = [f for f in prefix.glob("*_idx.npz") if Path(str(f)[: -len("_idx.npz")] + "_ids.npy").exists()]
        if d.raw_corpus is not None:
            problems.append(SpecProblem("data.raw_corpus", "data.input_prefix is a directory of tokenized corpora; "
                                        "tokenize raw text into a file prefix instead (or drop data.raw_corpus)",
                                        line_for("data.raw_corpus", lines)))
        elif not pairs:
            problems.append(SpecProblem("data.input_prefix", f"{prefix} is a directory without any <name>_ids.npy + "
                                        f"<name>_idx.npz pair; point it at a corpus prefix or a directory of them",
                                        line_for("data.input_prefix", lines)))
        has_ids = True
    if d.raw_corpus is not None and not prefix.is_dir():
        if not abs_path(d.raw_corpus).exists():
            problems.append(SpecProblem("data.raw_corpus", f"{d.raw_corpus} does not exist; fix the path (relative paths are from the current directory)", line_for("data.raw_corpus", lines)))
    elif not has_ids:
        problems.append(SpecProblem("data.input_prefix", f"{prefix}_ids.npy / _idx.npz not found; run data_tools.create_pretraining_data or set data.raw_corpus", line_for("data.input_prefix", lines)))
    if d.vocab_file is not None and not abs_path(d.vocab_file).is_file():
        what = "is not a file" if abs_path(d.vocab_file).exists() else "does not exist"
        problems.append(SpecProblem("data.vocab_file", f"{d.vocab_file} {what}; fix the path (relative paths are from "
                                    f"the current directory)", line_for("data.vocab_file", lines)))
    name = spec.model.model_name_or_path
    if not is_builtin(name):
        if local_model_path(name) is None:
            problems.append(SpecProblem(
                "model.model_name_or_path",
                f"{name!r} is neither a built-in config ({', '.join(BUILTIN_MODELS)}) nor a local directory; give the "
                f"model directory training starts from (for the released ERNIE 1.0: `python -m ernie_cluster "
                f"pretrained ernie-1.0-base-zh --out DIR`, copied here)", line_for("model.model_name_or_path", lines)))
    elif d.vocab_file is None:
        problems.append(SpecProblem("data.vocab_file", f"built-in model {name!r} needs a local vocab file (nothing is downloaded)", line_for("data", lines)))
    c = spec.environment.container
    if c is not None and _local_image(c.runtime, c.image) and not abs_path(c.image).exists():
        problems.append(SpecProblem("environment.container.image", f"{c.image} does not exist; fix the path (relative "
                                    f"paths are from the current directory), or name an image to pull (docker://..., "
                                    f"oras://..., library://... for apptainer; nvcr.io#... for pyxis)",
                                    line_for("environment.container.image", lines)))
    return problems


def _local_image(runtime: str, image: str) -> bool:
    from ..container import is_local_image  # light: the container module imports this one

    return is_local_image(runtime, image)


def resolve_paths(spec: JobSpec) -> JobSpec:
    """Freeze relative paths against the submitting directory, so compute nodes see the same files."""
    updates: Dict[str, Any] = {"output_dir": str(abs_path(spec.output_dir))}
    data_updates = {"input_prefix": str(abs_path(spec.data.input_prefix))}
    for key in ("raw_corpus", "vocab_file"):
        value = getattr(spec.data, key)
        if value is not None:
            data_updates[key] = str(abs_path(value))
    updates["data"] = spec.data.model_copy(update=data_updates)
    if not is_builtin(spec.model.model_name_or_path):
        updates["model"] = spec.model.model_copy(update={"model_name_or_path": str(abs_path(spec.model.model_name_or_path))})
    if spec.convert.output_dir:
        updates["convert"] = spec.convert.model_copy(update={"output_dir": str(abs_path(spec.convert.output_dir))})
    c = spec.environment.container
    if c is not None and _local_image(c.runtime, c.image):
        image = c.model_copy(update={"image": str(abs_path(c.image))})
        updates["environment"] = spec.environment.model_copy(update={"container": image})
    return spec.model_copy(update=updates)
