"""Hostile values in every string field of the spec.

The string fields are found by walking JobSpec's pydantic models, so a field added later is covered (and
this module fails until VALID says how to set it). For each field:

* control characters and line breaks are refused, naming the field (or the dict entry / list item), its
  YAML line and the fix;
* printable shell metacharacters are either refused by that field's own rules, or stay one inert value
  in every rendered script: the scripts run under bash with stand-in srun/sbatch/scontrol/python
  executables that record their argv, and the #SBATCH lines are read the way sbatch reads them.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Dict, List, Literal, Tuple, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from ernie_cluster.render import render
from ernie_cluster.spec import JobSpec, SpecError, validate_text

from helpers_scripts import check_scripts_run, recorders
from helpers_spec import base_spec

CONTROL = ["\n", "\r", "\x00", "\x1b", "\x7f", "\u2028", "\u2029", "\x85", "\t"]
# printable, and each means something to a shell or to sbatch's #SBATCH parser
HOSTILE = ["$(touch pwned)", "`touch pwned`", "it's", 'say "hi"', "; rm -rf canary", "two words", "back\\slash",
           "50%j #x"]
PY_STAND_IN = "ernie-test-python"  # environment.python: a name found on PATH, so bash runs the recorder


def _valid(tmp: Path) -> Dict[str, Any]:
    """A valid value for every string field (strings of 2+ characters, so a character can go inside)."""
    data = tmp / "data"
    return {
        "name": "run-a",
        "output_dir": str(tmp / "run"),
        "cluster.backend": "slurm",
        "cluster.partition": "debug",
        "cluster.account": "acct",
        "cluster.qos": "normal",
        "cluster.time": "01:00:00",
        "cluster.constraint": "v100",
        "cluster.extra_sbatch": {"comment": "note"},
        "cluster.requeue.signal": "USR2",
        "cluster.convert_partition": "debug",
        "cluster.convert_time": "00:30:00",
        "resources.mem": "4G",
        "resources.nodes": "1-2",
        "environment.setup": ['echo "setup ran" >> "$ERNIE_TEST_REC/setup"'],
        "environment.env": {"DOMAIN_TAG": "news"},
        "environment.python": PY_STAND_IN,
        "environment.container.runtime": "apptainer",
        "environment.container.image": "docker://example/paddle:2.6",
        "environment.container.binds": ["/scratch/extra:/extra:ro"],
        "data.input_prefix": str(data / "corpus"),
        "data.raw_corpus": str(data / "raw.txt"),
        "data.vocab_file": str(data / "vocab.txt"),
        "data.split": "949,50,1",
        "data.split_sentences": "auto",
        "data.masking.strategy": "whole_word",
        "data.masking.span": "ngram",
        "model.model_name_or_path": "ernie-1.0-base-zh",
        "train.engine": "auto",
        "train.device": "cpu",
        "train.lr_decay_style": "linear",
        "train.async_checkpoint": "auto",
        "convert.output_dir": str(tmp / "converted"),
    }


def _unoptional(ann: Any) -> Any:
    if get_origin(ann) is Union:
        rest = [a for a in get_args(ann) if a is not type(None)]
        return rest[0] if len(rest) == 1 else ann
    return ann


def string_fields(model: type = JobSpec, prefix: str = "") -> Dict[str, str]:
    """Dotted path -> kind ('str', 'literal', 'dict', 'list', or 'unknown: ...') of every string-holding field."""
    found: Dict[str, str] = {}
    for name, field in model.model_fields.items():
        path, ann = prefix + name, _unoptional(field.annotation)
        origin, args = get_origin(ann), get_args(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            found.update(string_fields(ann, path + "."))
        elif ann is str or (origin is Union and str in args):  # str, or a count that may be written as text
            found[path] = "str"
        elif origin is Literal and all(isinstance(a, str) for a in args):
            found[path] = "literal"
        elif origin is dict and args == (str, str):
            found[path] = "dict"
        elif origin is list and args == (str,):
            found[path] = "list"
        elif ann in (int, float, bool):
            continue
        else:
            found[path] = f"unknown: {ann!r}"  # a type this module cannot set yet
    return found


def targets() -> List[Tuple[str, str]]:
    """(field, part): 'value' of a str/Literal field, 'key'/'value' of a dict entry, 'item' of a list."""
    out = []
    for path, kind in string_fields().items():
        parts = {"dict": ("key", "value"), "list": ("item",)}.get(kind, ("value",))
        out += [(path, part) for part in parts]
    return out


_BASES: Dict[Path, Dict[str, Any]] = {}


def _spec_dict(tmp: Path, values: Dict[str, Any]) -> Dict[str, Any]:
    if tmp not in _BASES:  # base_spec writes its data files: once per test directory
        _BASES[tmp] = base_spec(tmp)
    spec = copy.deepcopy(_BASES[tmp])
    for path, value in values.items():
        node = spec
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return spec


def _change(values: Dict[str, Any], field: str, part: str, fn) -> Tuple[Dict[str, Any], str]:
    """values with `fn` applied to one part of one field; also the path the error should name."""
    values = dict(values)
    v = values[field]
    if part == "key":
        (k, val), = v.items()
        values[field] = {fn(k): val}
        return values, field
    if part == "value" and isinstance(v, dict):
        (k, val), = v.items()
        values[field] = {k: fn(val)}
        return values, f"{field}.{k}"
    if part == "item":
        values[field] = [fn(v[0])]
        return values, f"{field}[0]"
    values[field] = fn(v)
    return values, field


def _embed(ch: str):
    return lambda s: s[: len(s) // 2] + ch + s[len(s) // 2:]


def _validate(tmp: Path, values: Dict[str, Any], overrides: List[str] = ()) -> Tuple[JobSpec, str]:
    text = yaml.safe_dump(_spec_dict(tmp, values), sort_keys=False)
    return validate_text(text, "hostile.yaml", list(overrides), check_paths=False), text


_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def test_every_string_field_is_known(tmp_path):
    fields = string_fields()
    unknown = {p: k for p, k in fields.items() if k.startswith("unknown")}
    assert not unknown, f"teach this module to set these fields: {unknown}"
    assert set(fields) == set(_valid(tmp_path)), "VALID must hold exactly the spec's string fields"
    assert len(fields) >= 27  # the walk does find the nested sections
    _validate(tmp_path, _valid(tmp_path))  # and VALID is a valid spec


@pytest.mark.parametrize("field,part", targets(), ids=[f"{f}-{p}" for f, p in targets()])
def test_control_characters_are_refused_naming_the_field(tmp_path, field, part):
    valid = _valid(tmp_path)
    missed = []
    for ch in CONTROL:
        values, expected_path = _change(valid, field, part, _embed(ch))
        try:
            _, text = _validate(tmp_path, values)
        except SpecError as exc:
            problems = [p for p in exc.problems if p.path == expected_path]
            if not problems or "control characters" not in problems[0].message or "remove the" not in problems[0].message:
                missed.append((repr(ch), [(p.path, p.message) for p in exc.problems]))
                continue
            p = problems[0]
            lines = yaml.safe_dump(_spec_dict(tmp_path, values), sort_keys=False).splitlines()
            leaf = expected_path.rsplit(".", 1)[-1].split("[")[0]
            line = lines[p.line - 1] if p.line else ""
            assert (line.strip().startswith("- ") if part == "item" else f"{leaf}:" in line), (ch, p.line, line)
            assert not any(_UNPRINTABLE.search(q.render("x.yaml")) for q in exc.problems), "each report line stays printable"
        else:
            missed.append((repr(ch), "accepted"))
    assert not missed, f"{field} ({part}) let these through or named another field: {missed}"


def test_control_characters_in_overrides_and_the_cli(tmp_path, capsys):
    from ernie_cluster.cli import main
    from helpers_spec import write_spec

    with pytest.raises(SpecError) as info:
        _validate(tmp_path, _valid(tmp_path), ["name=a\x1bb"])
    assert [p.path for p in info.value.problems] == ["name"]
    path = write_spec(tmp_path / "s.yaml", _spec_dict(tmp_path, {**_valid(tmp_path), "output_dir": f"{tmp_path}/r\nx"}))
    for command in (["validate"], ["render"], ["submit"], ["submit", "--dry-run"], ["render", "--skip-path-checks"]):
        assert main(command + [str(path)]) == 2
        err = capsys.readouterr().err
        line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if l.startswith("output_dir:"))
        assert f"s.yaml:{line}: output_dir: " in err and "remove the newline" in err, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "r\nx").exists()


# ---------------------------------------------------------------------------
# Printable hostile values
# ---------------------------------------------------------------------------


def sbatch_options(script: str) -> List[Tuple[str, str]]:
    """The options sbatch reads from a script's #SBATCH lines, as Slurm 22.05's get_argument() parses them:
    whitespace splits, '...' and "..." quote, a backslash escapes the next character (inside quotes too),
    an unquoted '#' ends the line; parsing stops at the first line that is a command."""
    out: List[Tuple[str, str]] = []
    for line in script.split("\n"):
        if not line.startswith("#SBATCH"):
            if line.strip() and not line.lstrip().startswith("#"):
                break
            continue
        args, cur, quote, escape, has = [], [], "", False, False
        for c in line[len("#SBATCH"):] + " ":
            if escape:
                cur.append(c)
                escape = False
            elif c == "\\":
                escape = has = True
            elif quote:
                if c == quote:
                    quote = ""
                else:
                    cur.append(c)
            elif c in "\"'":
                quote, has = c, True
            elif c == "#":
                break
            elif c.isspace():
                if cur or has:
                    args.append("".join(cur))
                cur, has = [], False
            else:
                cur.append(c)
                has = True
        assert not quote, f"sbatch refuses an unmatched quote: {line}"
        if cur or has:
            args.append("".join(cur))
        for arg in args:
            assert arg.startswith("--"), f"{line!r} gives sbatch the stray argument {arg!r}"
            key, _, value = arg[2:].partition("=")
            out.append((key, value))
    return out


def test_sbatch_options_reads_like_sbatch():
    assert sbatch_options("#!/bin/bash\n#SBATCH --job-name='a b'\n#SBATCH --x=\"c\\\"d\" # note\n"
                          "#SBATCH --y='e\\\\f'\necho\n#SBATCH --z=1\n") == [("job-name", "a b"), ("x", 'c"d'), ("y", "e\\f")]


def _classify(tmp: Path, valid: Dict[str, Any], hostile: str) -> List[Tuple[str, str]]:
    """The targets that take `hostile` (appended to a valid value); asserts the others are refused by field."""
    accepted = []
    for field, part in targets():
        if field not in valid:
            continue  # an optional section this run leaves out (environment.container)
        values, expected_path = _change(valid, field, part, lambda s: s + hostile)
        try:
            _validate(tmp, values)
        except SpecError as exc:
            paths = {p.path for p in exc.problems}
            assert paths <= {field, expected_path}, f"{hostile!r} in {field} ({part}) was refused naming {paths}"
        else:
            accepted.append((field, part))
    return accepted


CONTAINERS = {  # environment.container: none, or each runtime (their words stay words too)
    None: {},
    "apptainer": {},
    "pyxis": {"environment.container.runtime": "pyxis", "environment.container.image": "nvcr.io#nvidia/paddle:24.01",
              "environment.container.binds": ["/scratch/extra:/extra:ro"]},
}


def _valid_for(tmp: Path, runtime) -> Dict[str, Any]:
    valid = _valid(tmp)
    if runtime is None:
        return {k: v for k, v in valid.items() if not k.startswith("environment.container.")}
    return {**valid, **CONTAINERS[runtime]}


@pytest.mark.parametrize("runtime", list(CONTAINERS), ids=lambda r: r or "no-container")
@pytest.mark.parametrize("hostile", HOSTILE)
def test_printable_hostile_values_are_refused_or_stay_one_value(tmp_path, hostile, runtime):
    valid = _valid_for(tmp_path, runtime)
    accepted = _classify(tmp_path, valid, hostile)
    # "any printable text" by design; the setup lines are the user's own shell code and stay valid here
    must = {("name", "value"), ("environment.env", "value"), ("cluster.extra_sbatch", "value"),
            ("environment.python", "value"), ("data.input_prefix", "value")}
    if runtime == "apptainer":
        must.add(("environment.container.image", "value"))
    assert must <= set(accepted), accepted
    values = dict(valid)
    for field, part in accepted:
        if field != "environment.setup":
            values, _ = _change(values, field, part, lambda s: s + hostile)
    spec, _ = _validate(tmp_path, values)
    rendered = render(spec)
    python = rendered.python
    assert python == spec.environment.python  # no '/': found on PATH, so the stand-in below runs

    rec, work, out, env = recorders(tmp_path, python)
    scripts = {"train.sbatch": rendered.train_sbatch, "convert.sbatch": rendered.convert_sbatch,
               "submit.sh": rendered.submit_sh, "submitit.train": rendered.train.sbatch_text,
               "submitit.convert": rendered.convert.sbatch_text}
    for fname, text in scripts.items():
        (out / fname).write_text(text)
    check_scripts_run(spec, out, work, env, rec)
    _check_sbatch_lines(spec, scripts)
    for where in (tmp_path, work, out, spec.run_dir(), spec.run_dir().parent):
        assert not list(where.glob("pwned*")), f"a value ran as a command in {where}"
    assert (work / "canary").is_dir()


def _check_sbatch_lines(spec: JobSpec, scripts: Dict[str, str]) -> None:
    """The #SBATCH lines, read as sbatch reads them; the setup line once in each job script."""
    name, run_dir = spec.name, str(spec.run_dir())
    (comment,) = spec.cluster.extra_sbatch.values()
    expected = {"train.sbatch": (name, f"{run_dir}/slurm/train-%j.out"),
                "convert.sbatch": (f"{name}-convert", f"{run_dir}/slurm/convert-%j.out"),
                "submitit.train": (name, f"{run_dir}/slurm/%j/%j_0_log.out"),
                "submitit.convert": (f"{name}-convert", f"{run_dir}/slurm/%j/%j_0_log.out")}
    for fname, (job_name, output) in expected.items():
        options = sbatch_options(scripts[fname])
        keys = [k for k, _ in options]
        assert len(keys) == len(set(keys)), f"{fname}: an option twice: {keys}"
        got = dict(options)
        assert (got["job-name"], got["output"], got["comment"]) == (job_name, output, comment), fname

    # the setup line is the user's shell code: one whole line, run once by each job script
    for fname in ("train.sbatch", "convert.sbatch", "submitit.train", "submitit.convert"):
        assert scripts[fname].split("\n").count(spec.environment.setup[0]) == 1, fname


@pytest.mark.slurm
def test_real_sbatch_reads_hostile_names_and_options_back(slurm_cluster, tmp_path):
    """The local Slurm's own sbatch parses the rendered #SBATCH lines to exactly the spec's values."""
    from ernie_cluster.render import convert_executor_params, submitit_folder, submitit_sbatch_text

    name = "j $(touch pwned) `x` 'q\" \\ #h hetjob"
    comment = "c 'q' \"d\" \\ # e \\"
    values = {**_valid_for(tmp_path, None), "name": name, "cluster.extra_sbatch": {"comment": comment},
              "output_dir": str(tmp_path / "run dir 'x'")}
    for key in ("cluster.partition", "cluster.convert_partition", "cluster.account", "cluster.qos", "cluster.constraint"):
        del values[key]  # the test cluster's defaults
    s, _ = _validate(tmp_path, values)
    r = render(s)
    jobs: List[str] = []
    try:
        for fname, job_name in (("train.sbatch", name), ("convert.sbatch", f"{name}-convert"),
                                ("submitit.train", name), ("submitit.convert", f"{name}-convert")):
            text = {"train.sbatch": r.train_sbatch, "convert.sbatch": r.convert_sbatch,
                    "submitit.train": r.train.sbatch_text,
                    # the conversion as submit.py sends it: after the (held) training job
                    "submitit.convert": submitit_sbatch_text(convert_executor_params(s, jobs[-1] if jobs else ""),
                                                             submitit_folder(r.run_dir), r.python)}[fname]
            script = tmp_path / fname
            script.write_text(text)
            job = slurm_cluster.sbatch("--hold", str(script))
            jobs.append(job)
            got = slurm_cluster.run("squeue", "-h", "-j", job, "-o", "%j|%k").rstrip("\n")
            assert got == f"{job_name}|{comment}", fname
    finally:
        if jobs:
            slurm_cluster.run("scancel", *jobs, check=False)
    assert not list(tmp_path.glob("pwned*"))
