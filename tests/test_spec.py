"""Spec validation: every bad spec gets a clear error naming the field, its line and the fix; exit 2; nothing written."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ernie_cluster.cli import main
from ernie_cluster.spec import SpecError, load_spec, parse_override, slurm_time_to_seconds, validate_text

from helpers_spec import base_spec, write_spec

REPO = Path(__file__).resolve().parent.parent


def _set(spec: dict, dotted: str, value) -> dict:
    spec = copy.deepcopy(spec)
    node = spec
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    if value is _DELETE:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return spec


_DELETE = object()

# (dotted key to change, new value, field named in the error, words the message must contain)
BAD_SPECS = [
    ("colour", "blue", "colour", "unknown key"),
    ("cluster.partiton", "gpu", "cluster.partiton", "did you mean 'partition'"),
    ("cluster.time", "25 hours", "cluster.time", "Slurm time"),
    ("resources.nodes", 0, "resources.nodes", "greater than or equal to 1"),
    ("train.device", "gpu", "resources.gpus_per_node", "no GPUs are requested"),
    ("train.dp_degree", 3, "train.dp_degree", "make them equal"),
    ("train.global_batch_size", 6, "train.global_batch_size", "not a multiple"),
    ("train.min_lr", 0.5, "train.min_lr", "swap them"),
    ("train.engine", "fast", "train.engine", "choose one of"),
    ("train.use_amp", True, "train.use_amp", "needs a GPU"),
    ("train.max_steps", _DELETE, "train.max_steps", "required"),
    ("data", _DELETE, "data", "required"),
    ("model.num_attention_heads", 3, "model", "divisible"),
    ("data.split", "90,10", "data.split", "three non-negative weights"),
    ("cluster.requeue.signal_lead_s", 900, "cluster.requeue.signal_lead_s", "not shorter than cluster.time"),
    ("data.input_prefix", "/nonexistent/corpus", "data.input_prefix", "not found"),
    ("data.input_prefix", "/", "data.input_prefix", "directory without any"),
    ("data.vocab_file", "/nonexistent/vocab.txt", "data.vocab_file", "not a file"),
    ("data.raw_corpus", "/nonexistent/corpus.txt", "data.raw_corpus", "does not exist"),
    ("cluster.extra_sbatch", {"time": "1:00:00"}, "cluster.extra_sbatch", "use cluster.time"),
    ("environment.env", {"BAD-NAME": "1"}, "environment.env", "not a valid environment variable"),
    ("environment.env", {"HF_TOKEN": "hf_x"}, "environment.env", "looks like a secret"),
    ("environment.env", {"PADDLE_MASTER": "10.0.0.1:8090"}, "environment.env", "override paddle.distributed.launch"),
    ("resources.mem", "lots", "resources.mem", "memory size"),
    ("train.mp_degree", 2, "train.mp_degree", "not supported"),
    ("train.sharding_degree", 2, "train.sharding_degree", "not supported yet"),
    ("name", "two\nlines", "name", "control characters"),
    ("data.masking.max_predictions_per_seq", 500, "data.masking.max_predictions_per_seq", "must not exceed"),
    ("cluster.requeue.signal", "KILL", "cluster.requeue.signal", "choose one of"),
    ("model.model_name_or_path", "/nonexistent/model", "model.model_name_or_path", "neither a built-in"),
    ("train.warmup_rate", 2, "train.warmup_rate", "less than or equal to 1"),
    ("cluster.backend", "kubernetes", "cluster.backend", "choose one of"),
]


@pytest.mark.parametrize("key,value,field,words", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_is_rejected_with_field_line_and_fix(tmp_path, capsys, key, value, field, words):
    spec = _set(base_spec(tmp_path), key, value)
    path = write_spec(tmp_path / "bad.yaml", spec)
    code = main(["submit", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    line = next((l for l in err.splitlines() if f": {field}" in l), None)
    assert line is not None, err
    assert words in line, err
    assert not (tmp_path / "run").exists(), "nothing may be written for a bad spec"


def test_error_names_the_yaml_line(tmp_path):
    spec = base_spec(tmp_path)
    text = yaml.safe_dump(spec, sort_keys=False).replace("max_steps: 10", "max_steps: ten")
    expected_line = next(i for i, l in enumerate(text.splitlines(), 1) if "max_steps" in l)
    with pytest.raises(SpecError) as info:
        validate_text(text, "x.yaml", [])
    (problem,) = info.value.problems
    assert problem.path == "train.max_steps" and problem.line == expected_line
    assert f"x.yaml:{expected_line}: train.max_steps" in info.value.report()


def test_all_problems_are_reported_at_once(tmp_path):
    spec = base_spec(tmp_path)
    spec["cluster"]["time"] = "soon"
    spec["train"]["engine"] = "warp"
    spec["extra"] = 1
    with pytest.raises(SpecError) as info:
        validate_text(yaml.safe_dump(spec), "x.yaml", [])
    assert {p.path for p in info.value.problems} == {"cluster.time", "train.engine", "extra"}


def test_invalid_yaml_and_duplicate_keys(tmp_path, capsys):
    bad = tmp_path / "syntax.yaml"
    bad.write_text("name: x\ntrain: [unclosed\n")
    assert main(["validate", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: a\nname: b\n")
    assert main(["validate", str(dup)]) == 2
    assert "duplicate key 'name'" in capsys.readouterr().err


def test_yaml_is_loaded_safely(tmp_path, capsys):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    assert main(["validate", str(evil)]) == 2
    assert not Path("pwned").exists()
    assert "not valid YAML" in capsys.readouterr().err


def test_top_level_must_be_a_mapping(tmp_path, capsys):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert main(["validate", str(path)]) == 2
    assert "top level must be a mapping" in capsys.readouterr().err


def test_missing_spec_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "none.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_overrides_apply_and_are_validated(tmp_path, capsys):
    path = write_spec(tmp_path / "s.yaml", base_spec(tmp_path))
    spec = load_spec(path, ["train.max_steps=1000", "cluster.requeue.max_requeues=3", "train.use_recompute=true"])
    assert spec.train.max_steps == 1000 and spec.cluster.requeue.max_requeues == 3 and spec.train.use_recompute is True
    assert main(["validate", str(path), "train.max_steps=-5"]) == 2
    assert "train.max_steps" in capsys.readouterr().err
    assert main(["validate", str(path), "train.max_stepz=5"]) == 2
    assert "did you mean 'max_steps'" in capsys.readouterr().err
    assert main(["validate", str(path), "nonsense"]) == 2
    assert "must look like section.key=value" in capsys.readouterr().err


def test_parse_override_types():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a.b=1e-4") == (["a", "b"], 1e-4)
    assert parse_override("a=false") == (["a"], False)
    assert parse_override("a=x; rm -rf ~") == (["a"], "x; rm -rf ~")


def test_derived_values(tmp_path):
    spec = base_spec(tmp_path, resources={"nodes": 2, "procs_per_node": 2}, train={"global_batch_size": 32})
    s = validate_text(yaml.safe_dump(spec), "x.yaml", [])
    assert (s.dp_degree, s.global_batch_size, s.accumulate_steps) == (4, 32, 2)
    assert s.train.resolved_engine == "dynamic"
    assert s.decay_steps == s.train.max_steps


def test_slurm_time_formats():
    assert slurm_time_to_seconds("30") == 1800
    assert slurm_time_to_seconds("10:00") == 600
    assert slurm_time_to_seconds("1:00:00") == 3600
    assert slurm_time_to_seconds("2-00:00:00") == 172800
    assert slurm_time_to_seconds("1-2") == 93600
    with pytest.raises(ValueError):
        slurm_time_to_seconds("1h")


@pytest.mark.parametrize("name", ["ernie_dapt.yaml", "ernie_tiny_local.yaml", "ernie_tiny_slurm.yaml"])
def test_example_specs_validate(name):
    spec = load_spec(REPO / "jobs" / name, check_paths=(name != "ernie_dapt.yaml"))
    assert spec.name


def test_dapt_example_matches_the_seed():
    s = load_spec(REPO / "jobs" / "ernie_dapt.yaml", check_paths=False)
    assert (s.resources.nodes, s.resources.gpus_per_node) == (4, 8)
    assert (s.train.max_seq_len, s.train.max_lr, s.train.min_lr, s.train.use_amp) == (512, 1e-4, 1e-5, True)
    assert s.train.resolved_engine == "static" and s.dp_degree == 32


def test_unquoted_times_and_exponents_read_as_written(tmp_path):
    text = yaml.safe_dump(base_spec(tmp_path), sort_keys=False)
    text = text.replace("time: 00:10:00", "time: 24:00:00").replace("max_steps: 10", "max_steps: 10\n  max_lr: 1e-4")
    text = text.replace("time: '00:10:00'", "time: 24:00:00")
    s = validate_text(text, "x.yaml", [])
    assert s.cluster.time == "24:00:00" and s.train.max_lr == 1e-4
    assert validate_text(text.replace("time: 24:00:00", "time: 90"), "x.yaml", []).cluster.time == "90"


def test_frozen_spec_round_trips(tmp_path):
    from ernie_cluster.spec import load_frozen
    s = load_spec(REPO / "jobs" / "ernie_dapt.yaml", check_paths=False)
    (tmp_path / "spec.yaml").write_text(s.to_yaml())
    assert load_frozen(tmp_path / "spec.yaml") == s


def test_every_spec_key_is_documented_in_the_readme():
    from pydantic import BaseModel

    from ernie_cluster.spec import JobSpec

    readme = (REPO / "README.md").read_text()
    missing = []

    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
            elif f"`{prefix}{name}`" not in readme and f"`{name}`" not in readme and f" `{name}`," not in readme:
                missing.append(prefix + name)

    walk(JobSpec)
    assert not missing, f"README's spec table lacks: {missing}"
