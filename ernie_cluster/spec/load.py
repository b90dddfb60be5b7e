"""Loading a spec: read the file, apply the overrides, validate with pydantic, then the cross-field, model,
weights and path checks; every problem is reported together as `SpecError`, each naming the field, its YAML
line when known, and how to fix it. Relative paths are then frozen against the current directory."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml
from pydantic import BaseModel, ValidationError

from .architectures import is_builtin
from .job import JobSpec
from .paths import path_problems, resolve_paths
from .problems import SpecError, SpecProblem
from .reading import apply_overrides, line_for, parse_yaml
from .sections import ModelSection
from .shape import corpus_vocab_problems, model_shape_problems


def _model_for(path: Tuple[Any, ...]) -> Optional[type]:
    """The section model at `path` (field names from JobSpec down), or None when it names no section."""
    model: Any = JobSpec
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        # an optional section (environment.container): Optional[X] is Union[X, None]
        ann = next((a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _problem_from_pydantic(err: Dict[str, Any], lines: Dict[str, int]) -> SpecProblem:
    """One pydantic error as a problem in the spec's words: the field path, a fix, the line."""
    loc = tuple(err.get("loc", ()))
    path = ".".join(str(p) for p in loc)
    kind = err.get("type", "")
    if kind == "control_character":  # the message says it all; the path names the dict entry or list item
        path += err["ctx"]["entry"]
        return SpecProblem(path, err["ctx"]["message"], line_for(path, lines))
    if kind == "extra_forbidden":
        parent = _model_for(loc[:-1])
        choices = sorted(parent.model_fields) if parent is not None else []
        guess = difflib.get_close_matches(str(loc[-1]), choices, n=1, cutoff=0.6)
        hint = f"did you mean '{guess[0]}'? " if guess else ""
        msg = f"unknown key; {hint}valid keys here: {', '.join(choices)}"
    elif kind == "missing":
        msg = "required; add it"
    elif kind == "literal_error":
        msg = f"{err.get('input')!r} is not allowed; choose one of: {err['ctx']['expected']}"
    else:
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if "input" in err and kind not in ("model_type", "dict_type") and not isinstance(err["input"], dict):
            msg += f" (got {err['input']!r})"
    return SpecProblem(path, msg, line_for(path, lines))


def load_spec(path: str | Path, overrides: Optional[List[str]] = None, *, check_paths: bool = True,
              path_warnings: Optional[List[SpecProblem]] = None) -> JobSpec:
    """Read, override and validate a spec; raise SpecError listing every problem.

    With `path_warnings` (a list), missing data/model paths are appended there instead of refusing the spec:
    `render` shows what would be submitted from any machine.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(source, [SpecProblem("", "file not found; pass the path of a job spec such as jobs/ernie_tiny_local.yaml")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(source, [SpecProblem("", f"cannot read: {exc}")]) from None
    return validate_text(text, source, overrides or [], check_paths=check_paths, path_warnings=path_warnings)


def validate_text(text: str, source: str, overrides: List[str], *, check_paths: bool = True,
                  path_warnings: Optional[List[SpecProblem]] = None) -> JobSpec:
    """Validate spec text; relative paths are resolved against the current directory and frozen."""
    data, lines = parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(source, [SpecProblem("", "the top level must be a mapping of sections (name, cluster, resources, data, model, train, convert)", 1)])
    problems = apply_overrides(data, overrides)
    spec: Optional[JobSpec] = None
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        problems += [_problem_from_pydantic(e, lines) for e in exc.errors()]
    if spec is not None:
        problems += [SpecProblem(p, m, line_for(p, lines)) for p, m in spec.cross_field_errors()]
        # Files that exist here are read (vocab, a model directory's config); missing ones are path problems.
        problems += [SpecProblem(p, m, line_for(p, lines))
                     for p, m in model_shape_problems(spec, read_weights=check_paths)]
        if check_paths:
            found = path_problems(spec, lines)
            if path_warnings is not None:
                path_warnings.extend(found)
            else:
                problems += found
            # the corpus exists here, so a vocab mismatch is wrong everywhere (not a warning under render)
            problems += [SpecProblem(p, m, line_for(p, lines)) for p, m in corpus_vocab_problems(spec)]
    if problems:
        raise SpecError(source, problems)
    assert spec is not None
    resolved = resolve_paths(spec)
    # Resolving joins the current directory, which may hold a character the spec may not; validate the frozen form.
    try:
        JobSpec.model_validate(resolved.model_dump())
    except ValidationError as exc:
        raise SpecError(source, [_problem_from_pydantic(e, lines) for e in exc.errors()]) from None
    return resolved


def load_frozen(path: str | Path) -> JobSpec:
    """Load a spec frozen into a run directory (already validated and resolved)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get("data"), dict):
        # frozen before data.shuffle_documents existed: that run's splits are contiguous
        data["data"].setdefault("shuffle_documents", False)
    if isinstance(data, dict) and isinstance(data.get("model"), dict) and "random_init" not in data["model"]:
        # frozen before model.random_init existed: a built-in name meant random weights then
        name = data["model"].get("model_name_or_path", ModelSection.model_fields["model_name_or_path"].default)
        if is_builtin(str(name)):
            data["model"]["random_init"] = True
    return JobSpec.model_validate(data)
