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
    ("resources.nodes", 0, "resources.nodes", "outside 1-4096"),
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
    ("data.vocab_file", "/nonexistent/vocab.txt", "data.vocab_file", "does not exist"),
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
    # the model shape as the trainer will build it: built-in defaults merged with the overrides
    ("train.max_seq_len", 600, "train.max_seq_len", "exceeds max_position_embeddings 513"),
    ("model.num_attention_heads", _DELETE, "model.hidden_size", "not divisible by num_attention_heads 12"),
    ("model.type_vocab_size", 1, "model.type_vocab_size", "binary_head: false"),
    ("output_dir", "/tmp/run-%u", "output_dir", "choose a directory path without '%'"),
    ("environment.setup", ["module load cuda\nrm -rf canary"], "environment.setup[0]", "write each line as its own list item"),
    ("cluster.extra_sbatch", {"mail-type": "END\n#SBATCH --uid=0"}, "cluster.extra_sbatch.mail-type", "remove the newline"),
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
    assert parse_override("a=x; rm -rf canary") == (["a"], "x; rm -rf canary")


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
            # an optional section (environment.container): itself and its keys
            inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            if inner and f"`{prefix}{name}`" not in readme:
                missing.append(prefix + name)
            ann = inner[0] if inner else ann
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
            elif f"`{prefix}{name}`" not in readme and f"`{name}`" not in readme and f" `{name}`," not in readme:
                missing.append(prefix + name)

    walk(JobSpec)
    assert not missing, f"README's spec table lacks: {missing}"


# ---------------------------------------------------------------------------
# render and submit --dry-run print the scripts whatever paths exist here
# ---------------------------------------------------------------------------


def _missing_paths_spec(tmp_path: Path) -> Path:
    spec = base_spec(tmp_path, data={"input_prefix": "/nonexistent/corpus", "vocab_file": "/nonexistent/vocab.txt"},
                     model={"model_name_or_path": "/nonexistent/model"})
    return write_spec(tmp_path / "s.yaml", spec)


def _line_of(path: Path, key: str) -> int:
    return next(i for i, l in enumerate(path.read_text().splitlines(), 1) if l.strip().startswith(f"{key}:"))


def test_render_warns_about_missing_paths_and_prints_the_scripts(tmp_path, capsys):
    path = _missing_paths_spec(tmp_path)
    expected = [(f"s.yaml:{_line_of(path, 'input_prefix')}: data.input_prefix: ", "/nonexistent/corpus_ids.npy"),
                (f"s.yaml:{_line_of(path, 'vocab_file')}: data.vocab_file: ", "/nonexistent/vocab.txt does not exist"),
                (f"s.yaml:{_line_of(path, 'model_name_or_path')}: model.model_name_or_path: ", "neither a built-in")]
    for command in (["render"], ["submit", "--dry-run"], ["render", "--sbatch"]):
        assert main(command + [str(path)]) == 0, command
        out, err = capsys.readouterr()
        assert "#SBATCH --job-name=t" in out, command
        warnings = [l for l in err.splitlines() if l.startswith("warning: ")]
        for where, what in expected:
            assert any(where in l and what in l for l in warnings), (command, err)
        assert "validate and submit refuse these" in err
    for command in (["validate"], ["submit"]):
        assert main(command + [str(path)]) == 2, command
        err = capsys.readouterr().err
        assert "warning:" not in err and all(where in err and what in err for where, what in expected), err
    assert not (tmp_path / "run").exists(), "nothing may be written"
    # --skip-path-checks: no warning at all, and validate/submit take it as before
    assert main(["render", "--skip-path-checks", str(path)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["validate", "--skip-path-checks", str(path)]) == 0


def test_render_still_refuses_what_is_wrong_everywhere(tmp_path, capsys):
    spec = base_spec(tmp_path, data={"input_prefix": "/nonexistent/corpus"}, train={"min_lr": 0.5})
    path = write_spec(tmp_path / "s.yaml", spec)
    assert main(["render", str(path)]) == 2
    err = capsys.readouterr().err
    assert "train.min_lr" in err and "warning: " in err and "data.input_prefix" in err
    assert "prints the scripts anyway" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(Path("/shared/data/dapt").exists(), reason="this machine has the example's paths")
def test_render_of_the_dapt_example_works_on_any_machine():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ernie_cluster", "render", "jobs/ernie_dapt.yaml"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --partition=v100" in proc.stdout and "#SBATCH --nodes=4" in proc.stdout
    line = _line_of(REPO / "jobs" / "ernie_dapt.yaml", "input_prefix")
    assert f"warning: jobs/ernie_dapt.yaml:{line}: data.input_prefix: /shared/data/dapt/wanfang_ids.npy" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ernie_cluster", "validate", "jobs/ernie_dapt.yaml"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "data.input_prefix" in proc.stderr


# ---------------------------------------------------------------------------
# The model shape: built-in defaults or a model directory's config, merged with model.* overrides
# ---------------------------------------------------------------------------


def _validate_dict(spec: dict, **kw):
    return validate_text(yaml.safe_dump(spec, sort_keys=False), "m.yaml", [], **kw)


def _problems(spec: dict) -> dict:
    with pytest.raises(SpecError) as info:
        _validate_dict(spec)
    return {p.path: p.message for p in info.value.problems}


def test_the_large_models_own_shape_is_used(tmp_path):
    spec = base_spec(tmp_path, model={"model_name_or_path": "ernie-1.0-large-zh-cw"}, train={"max_seq_len": 513})
    spec["model"] = {"model_name_or_path": "ernie-1.0-large-zh-cw", "random_init": True}
    assert "exceeds max_position_embeddings 512" in _problems(spec)["train.max_seq_len"]
    spec["train"]["max_seq_len"] = 512
    _validate_dict(spec)  # 1024 hidden / 16 heads


def test_vocab_file_against_vocab_size(tmp_path):
    spec = base_spec(tmp_path)
    vocab = tmp_path / "vocab20.txt"
    vocab.write_text("".join(f"t{i}\n" for i in range(20)))
    spec["data"]["vocab_file"] = str(vocab)
    _validate_dict(spec)  # no model.vocab_size: the trainer pads the file's 20 tokens to 24
    spec["model"]["vocab_size"] = 16
    message = _problems(spec)["model.vocab_size"]
    assert "has 20 tokens but vocab_size is 16" in message and "set model.vocab_size to 24 or more" in message


def _model_dir(tmp_path: Path, config: dict, fname: str = "config.json") -> Path:
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    (d / fname).write_text(__import__("json").dumps(config))
    return d


_DIR_CONFIG = {"vocab_size": 16, "hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
               "intermediate_size": 128, "max_position_embeddings": 128, "type_vocab_size": 2}

# (config.json changes, file name, field named, words)
BAD_MODEL_DIRS = [
    ({"num_attention_heads": 5}, "config.json", "model.model_name_or_path", "not divisible by num_attention_heads 5"),
    ({"max_position_embeddings": 32}, "model_config.json", "train.max_seq_len", "exceeds max_position_embeddings 32"),
    ({"vocab_size": 6}, "config.json", "data.vocab_file", "has 7 tokens but vocab_size is 6"),
    ({"type_vocab_size": 1}, "config.json", "model.model_name_or_path", "no token type 1"),
    ({"hidden_act": "gelu_new"}, "config.json", "model.model_name_or_path", "not an activation"),
    ({"num_hidden_layers": 0}, "config.json", "model.model_name_or_path", "positive whole number"),
    ({"intermediate_size": "128"}, "config.json", "model.model_name_or_path", "positive whole number"),
    ({"pad_token_id": 16}, "config.json", "model.model_name_or_path", "outside the vocabulary of 16"),
]


@pytest.mark.parametrize("change,fname,field,words", BAD_MODEL_DIRS, ids=[str(b[0]) for b in BAD_MODEL_DIRS])
def test_model_directory_config_is_checked(tmp_path, capsys, change, fname, field, words):
    d = _model_dir(tmp_path, {**_DIR_CONFIG, **change}, fname)
    spec = base_spec(tmp_path)
    spec["model"] = {"model_name_or_path": str(d), "random_init": True}  # its architecture, from scratch
    path = write_spec(tmp_path / "s.yaml", spec)
    for command in ("validate", "render"):  # the directory exists here: render refuses too
        assert main([command, str(path)]) == 2
        err = capsys.readouterr().err
        line = next((l for l in err.splitlines() if f": {field}: " in l), None)
        assert line is not None and words in line, err
        assert f"s.yaml:{_line_of(path, field.split('.')[-1])}:" in line, err
    assert not (tmp_path / "run").exists()


def test_model_directory_without_a_config_or_with_broken_json(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    spec = base_spec(tmp_path)
    spec["model"] = {"model_name_or_path": str(d), "random_init": True}  # the config alone is read
    assert "has no config.json or model_config.json" in _problems(spec)["model.model_name_or_path"]
    (d / "config.json").write_text("{not json")
    assert "not readable JSON" in _problems(spec)["model.model_name_or_path"]


def test_model_directory_overrides_and_binary_head(tmp_path):
    d = _model_dir(tmp_path, {**_DIR_CONFIG, "num_attention_heads": 5, "type_vocab_size": 1})
    spec = base_spec(tmp_path)
    spec["model"] = {"model_name_or_path": str(d), "random_init": True, "num_attention_heads": 8}
    spec["data"]["masking"] = {"binary_head": False}
    _validate_dict(spec)  # 96 / 8 heads, and one token type is enough without sentence order


def test_missing_model_directory_only_checks_the_overrides(tmp_path):
    spec = base_spec(tmp_path)
    spec["model"] = {"model_name_or_path": "/nonexistent/model", "hidden_size": 96}
    _validate_dict(spec, check_paths=False)  # heads unknown here: nothing to refuse
    spec["model"]["num_attention_heads"] = 5
    with pytest.raises(SpecError) as info:
        _validate_dict(spec, check_paths=False)
    assert [p.path for p in info.value.problems] == ["model.num_attention_heads"]


def test_builtin_table_matches_paddlenlp():
    """ernie_cluster/spec/architectures.py keeps its own copy (the submit side never imports paddle); it must say what paddlenlp says."""
    import paddle.nn.functional as F
    from paddlenlp.transformers import ErnieConfig, ErnieModel

    from ernie_cluster.spec import (_ERNIE_CONFIG_DEFAULTS, _TRAINER_DEFAULTS, ACTIVATIONS, BUILTIN_CONFIGS,
                                    BUILTIN_MODELS)

    pretrained = ErnieModel.pretrained_init_configuration
    for name in BUILTIN_MODELS:
        real = ErnieConfig(**pretrained[name])
        assert BUILTIN_CONFIGS[name] == {k: getattr(real, k) for k in BUILTIN_CONFIGS[name]}, name
    default = ErnieConfig()
    assert _ERNIE_CONFIG_DEFAULTS == {k: getattr(default, k) for k in _ERNIE_CONFIG_DEFAULTS}
    assert set(_TRAINER_DEFAULTS) <= set(_ERNIE_CONFIG_DEFAULTS)
    assert all(callable(getattr(F, act, None)) for act in ACTIVATIONS)


def test_effective_shape_matches_what_the_trainer_builds(tmp_path):
    """effective_model_shape() against train/model.py's model_config() -> ErnieConfig, over built-ins and directories."""
    import json

    from paddlenlp.transformers import ErnieConfig

    from ernie_cluster.spec import effective_model_shape
    from ernie_cluster.train.model import model_config

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(f"t{i}\n" for i in range(21)))
    dir_partial = tmp_path / "partial"
    dir_partial.mkdir()
    # the keys train/model.py indexes directly must be there (it raises KeyError without them); the others default
    (dir_partial / "config.json").write_text(json.dumps({"hidden_size": 96, "num_attention_heads": 4,
                                                         "max_position_embeddings": 256, "vocab_size": 40}))
    (dir_partial / "vocab.txt").write_text("".join(f"t{i}\n" for i in range(33)))
    dir_old = tmp_path / "old"
    dir_old.mkdir()
    (dir_old / "model_config.json").write_text(json.dumps({"init_args": [dict(_DIR_CONFIG, hidden_act="gelu", vocab_size=32)],
                                                           "init_class": "ErnieModel"}))
    cases = [
        ({"model_name_or_path": "ernie-1.0-base-zh"}, str(vocab)),
        ({"model_name_or_path": "ernie-1.0"}, None),
        ({"model_name_or_path": "ernie-1.0-large-zh-cw"}, str(vocab)),
        ({"model_name_or_path": "ernie-1.0-base-zh", "vocab_size": 64, "hidden_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256, "type_vocab_size": 3},
         str(vocab)),
        ({"model_name_or_path": str(dir_partial)}, None),
        ({"model_name_or_path": str(dir_partial), "max_position_embeddings": 128}, str(vocab)),
        ({"model_name_or_path": str(dir_old)}, str(vocab)),
    ]
    for model, vocab_file in cases:
        spec = base_spec(tmp_path, train={"max_seq_len": 64})
        spec["model"] = {**model, "random_init": True}  # the architectures (and overrides) from scratch
        spec["data"] = {"input_prefix": spec["data"]["input_prefix"], **({"vocab_file": vocab_file} if vocab_file else {})}
        s = _validate_dict(spec, check_paths=False)
        shape, problems = effective_model_shape(s)
        assert not problems
        built = ErnieConfig(**model_config(s))
        assert shape.config == {k: getattr(built, k) for k in shape.config}, model
        assert set(shape.config) >= {"vocab_size", "hidden_size", "num_attention_heads", "max_position_embeddings",
                                     "type_vocab_size", "hidden_act"}, model


# ---------------------------------------------------------------------------
# The spec package: one import for the rest of the project, and no paddle on the submit side
# ---------------------------------------------------------------------------


def test_every_name_imported_from_the_spec_package_is_there():
    """Whatever module inside ernie_cluster/spec/ holds a name, `from ernie_cluster.spec import NAME` keeps working."""
    import ast

    import ernie_cluster.spec as spec

    wanted = set()
    for top in ("ernie_cluster", "data_tools", "tests", "bench", "scripts"):
        for path in (REPO / top).rglob("*.py"):
            if (REPO / "ernie_cluster" / "spec") in path.parents:
                continue
            package = ".".join(path.relative_to(REPO).parent.parts)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    module = f"{base}.{node.module}" if node.level else node.module
                    if module == "ernie_cluster.spec":
                        wanted |= {alias.name for alias in node.names}
    assert {"JobSpec", "SpecError", "load_spec", "validate_text", "load_frozen"} <= wanted
    assert sorted(name for name in wanted if not hasattr(spec, name)) == []


def test_validating_a_spec_imports_no_paddle(tmp_path):
    """The submit side: importing the spec and validating one, a model directory's config read, never imports paddle."""
    import subprocess
    import sys

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 64, "num_attention_heads": 2}')
    spec = base_spec(tmp_path)
    spec["model"] = {"model_name_or_path": str(model), "random_init": True}
    path = write_spec(tmp_path / "spec.yaml", spec)
    code = ("import sys\nfrom ernie_cluster.spec import load_spec\n"
            f"print(load_spec({str(path)!r}).starts_from())\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('paddle', 'paddlenlp'))\n"
            "print(bad)\nsys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "random weights (model.random_init), architecture of the config of" in out.stdout


def test_an_explicit_null_vocab_file_names_the_data_line(tmp_path):
    """A built-in architecture without a vocab: the problem points at `data:`, also when vocab_file: null is written."""
    spec = base_spec(tmp_path)
    spec["data"]["vocab_file"] = None
    text = yaml.safe_dump(spec, sort_keys=False)
    data_line = text.splitlines().index("data:") + 1
    assert "  vocab_file: null" in text.splitlines()
    with pytest.raises(SpecError) as info:
        validate_text(text, "x.yaml", [])
    (problem,) = [p for p in info.value.problems if p.path == "data.vocab_file"]
    assert "needs a local vocab file" in problem.message and problem.line == data_line
