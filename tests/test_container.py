"""environment.container: validation, the binds, and the rendered srun lines of both runtimes in both forms.

Neither runtime runs here (Debian 12 packages neither apptainer nor pyxis/enroot): the scripts run with stand-in
srun/python recorders (also in tests/test_spec_hostile.py, over every hostile value), and the real local Slurm
checks that submitit writes exactly the text render shows (tests/test_slurm_options.py).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from ernie_cluster import container
from ernie_cluster.cli import main
from ernie_cluster.render import render
from ernie_cluster.spec import SpecError, load_spec, validate_text

from helpers_spec import base_spec, write_spec

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
APPTAINER = {"runtime": "apptainer", "image": "/shared/images/paddle-2.6.2-gpu.sif", "binds": ["/scratch/cache"]}
PYXIS = {"runtime": "pyxis", "image": "nvcr.io#nvidia/paddle:24.01-py3", "binds": ["/scratch/cache:/cache:ro"]}


def _dapt(box: Dict[str, Any]):
    """The seed's spec with a container: its interpreter is the image's python3."""
    raw = yaml.safe_load((REPO / "jobs" / "ernie_dapt.yaml").read_text())
    del raw["environment"]["python"]
    raw["environment"]["container"] = box
    return validate_text(yaml.safe_dump(raw, sort_keys=False), "ernie_dapt.yaml", [], check_paths=False)


def _spec(tmp: Path, box: Dict[str, Any], overrides: List[str] = (), check_paths: bool = True, **sections):
    environment = {"container": box, **sections.pop("environment", {})}
    raw = base_spec(tmp, environment=environment, **sections)
    return validate_text(yaml.safe_dump(raw, sort_keys=False), "s.yaml", list(overrides), check_paths=check_paths)


def _problems(tmp: Path, box: Dict[str, Any], **kwargs) -> Dict[str, str]:
    with pytest.raises(SpecError) as info:
        _spec(tmp, box, **kwargs)
    return {p.path: p.message for p in info.value.problems}


# ---------------------------------------------------------------------------
# golden text of both runtimes, both forms
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["apptainer", "pyxis"])
@pytest.mark.parametrize("kind", ["train.sbatch", "convert.sbatch", "submitit.train.txt", "submitit.convert.txt"])
def test_golden_render_with_a_container(runtime, kind):
    r = render(_dapt(APPTAINER if runtime == "apptainer" else PYXIS))
    text = {"train.sbatch": r.train_sbatch, "convert.sbatch": r.convert_sbatch,
            "submitit.train.txt": r.train.describe(), "submitit.convert.txt": r.convert.describe()}[kind]
    golden = GOLDEN / f"ernie_dapt.{runtime}.{kind}"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"rendered text differs from {golden}; rerun with UPDATE_GOLDEN=1 if intended"


def test_apptainer_words_in_every_srun_line():
    s = _dapt(APPTAINER)
    r = render(s)
    prefix = ["apptainer", "exec", "--nv", "--pwd", "/shared/runs/ernie-dapt", "--bind", "/shared/runs/ernie-dapt",
              "--bind", "/shared/data/dapt",
              "--bind", "/shared/models/ernie-1.0-base-zh", "--bind", "/scratch/cache",
              "/shared/images/paddle-2.6.2-gpu.sif"]
    assert container.exec_prefix(s) == prefix and container.srun_options(s) == []
    assert (f"srun --ntasks-per-node=1 --kill-on-bad-exit=0 {shlex.join(prefix)} python3 -m ernie_cluster.launch "
            f'--run-dir "$run_dir" &') in r.train_sbatch
    assert f"exec srun --ntasks=1 {shlex.join(prefix)} sh -c " in r.convert_sbatch
    # submitit: the executor's python command; no srun_args
    assert r.executor_python == shlex.join([*prefix, "python3"]) and r.python == "python3"
    for job in (r.train, r.convert):
        assert "srun_args" not in job.executor_params
        assert f"{shlex.join(prefix)} python3 -u -m submitit.core._submit" in job.sbatch_text
        assert 'export APPTAINERENV_PYTHONPATH="$PYTHONPATH"' in job.sbatch_text


def test_pyxis_options_in_every_srun_line():
    s = _dapt(PYXIS)
    r = render(s)
    options = ["--container-image=nvcr.io#nvidia/paddle:24.01-py3",
               "--container-mounts=/shared/runs/ernie-dapt,/shared/data/dapt,/shared/models/ernie-1.0-base-zh,"
               "/scratch/cache:/cache:ro",
               "--container-workdir=/shared/runs/ernie-dapt",
               "--container-env=PYTHONPATH,PYTHONSAFEPATH,NCCL_IB_DISABLE,PPNLP_HOME"]
    assert container.srun_options(s) == options and container.exec_prefix(s) == []
    assert (f"srun --ntasks-per-node=1 --kill-on-bad-exit=0 {shlex.join(options)} python3 -m ernie_cluster.launch"
            in r.train_sbatch)
    assert f"exec srun --ntasks=1 {shlex.join(options)} sh -c " in r.convert_sbatch
    assert r.executor_python == "python3"
    for job in (r.train, r.convert):
        assert job.executor_params["srun_args"] == options
        srun = shlex.join(["srun", "--unbuffered", "--output", f"{r.run_dir}/slurm/%j/%j_%t_log.out", *options])
        assert f"{srun} python3 -u -m submitit.core._submit" in job.sbatch_text
        assert "APPTAINERENV" not in job.sbatch_text


def test_without_a_container_nothing_changes(tmp_path):
    s = validate_text(yaml.safe_dump(base_spec(tmp_path)), "s.yaml", [])
    r = render(s)
    assert "\n  container:" not in s.to_yaml() and container.task_words(s) == [] and container.setup_lines(s) == []
    assert r.host_python == r.python and "srun_args" not in r.train.executor_params


# ---------------------------------------------------------------------------
# binds
# ---------------------------------------------------------------------------


def test_automatic_binds_cover_every_directory_of_the_run(tmp_path):
    model = tmp_path / "models" / "m"  # not on this machine (check_paths=False): bound all the same
    s = _spec(tmp_path, {"runtime": "pyxis", "image": "nvcr.io#nvidia/paddle:24.01", "binds": ["/opt/x:/x:ro"]},
              check_paths=False, output_dir=str(tmp_path / "runs" / "a"),
              data={"raw_corpus": str(tmp_path / "raw" / "c.txt")},
              model={"model_name_or_path": str(model), "random_init": True},
              convert={"output_dir": str(tmp_path / "out" / "converted")})
    assert [(f, str(p)) for f, p in container.automatic_binds(s)] == [
        ("output_dir", f"{tmp_path}/runs/a"), ("data.input_prefix", f"{tmp_path}/data"),
        ("data.raw_corpus", f"{tmp_path}/raw"), ("model.model_name_or_path", str(model)),
        ("data.vocab_file", f"{tmp_path}/data"), ("convert.output_dir", f"{tmp_path}/out")]
    assert container.binds(s) == [f"{tmp_path}/runs/a", f"{tmp_path}/data", f"{tmp_path}/raw", str(model),
                                  f"{tmp_path}/out", "/opt/x:/x:ro"]
    assert container.writable_directories(s) == [f"{tmp_path}/runs/a", f"{tmp_path}/data", f"{tmp_path}/out"]
    assert container.setup_lines(s)[0].startswith(f"mkdir -p -- {tmp_path}/runs/a {tmp_path}/data {tmp_path}/out")


def test_a_directory_inside_a_bound_one_is_not_bound_again(tmp_path):
    s = _spec(tmp_path, {"runtime": "apptainer", "image": "docker://paddle:2", "binds": [str(tmp_path)]},
              output_dir=str(tmp_path / "run"))
    # the conversion's parent is the run directory; the data sits beside it; a user bind repeating one is dropped
    assert container.binds(s) == [f"{tmp_path}/run", f"{tmp_path}/data", str(tmp_path)]
    s = _spec(tmp_path, {"runtime": "apptainer", "image": "docker://paddle:2"}, output_dir=str(tmp_path / "run"),
              convert={"output_dir": str(tmp_path / "c")})
    assert container.binds(s) == [str(tmp_path)]  # tmp (the conversion's parent) holds the run and the data


def test_apptainer_nv_follows_the_gpus_unless_set(tmp_path):
    base = {"runtime": "apptainer", "image": "docker://paddle:2"}
    cpu = _spec(tmp_path, base)
    gpu = _spec(tmp_path, base, resources={"gpus_per_node": 2}, train={"device": "gpu", "max_seq_len": 64,
                                                                          "micro_batch_size": 4, "max_steps": 10})
    forced = _spec(tmp_path, {**base, "nv": True})
    assert "--nv" not in container.exec_prefix(cpu) and "--nv" in container.exec_prefix(gpu)
    assert "--nv" in container.exec_prefix(forced)
    assert container.exec_prefix(_spec(tmp_path, {**base, "runtime": "singularity"}))[:2] == ["singularity", "exec"]
    lines = container.setup_lines(_spec(tmp_path, {**base, "runtime": "singularity"}))
    assert 'export SINGULARITYENV_PYTHONPATH="$PYTHONPATH"' in lines[1]


# ---------------------------------------------------------------------------
# validation: field, line, fix; exit status 2
# ---------------------------------------------------------------------------


def test_runtime_must_be_known_and_unknown_keys_name_the_valid_ones(tmp_path):
    problems = _problems(tmp_path, {"runtime": "docker", "image": "x"})
    assert "'docker' is not allowed" in problems["environment.container.runtime"]
    assert "'apptainer'" in problems["environment.container.runtime"]
    problems = _problems(tmp_path, {"runtime": "pyxis", "image": "x", "mounts": ["/a"]})
    assert "valid keys here: binds, image, nv, runtime" in problems["environment.container.mounts"]
    assert "required" in _problems(tmp_path, {"runtime": "pyxis"})["environment.container.image"]


@pytest.mark.parametrize("image,runtime,why", [
    ("", "apptainer", "is empty"), ("  ", "pyxis", "is empty"), ("-x", "apptainer", "starts with '-'"),
    ("nvcr.io#nvidia/paddle:24 x", "pyxis", "whitespace"),
])
def test_bad_images_are_refused(tmp_path, image, runtime, why):
    assert why in _problems(tmp_path, {"runtime": runtime, "image": image})["environment.container.image"]


@pytest.mark.parametrize("bind,why", [
    ("data", "absolute path"), ("/a,/b", "absolute path"), ("/a:/b:ro:x", "absolute path"), ("/a b", "absolute path"),
    ("/a:b", "absolute path"), ("/a:/b:rx", "'ro' or 'rw'"), ("/", "whole file system"), ("/$(touch x)", "absolute"),
    ('/a"b', "absolute path"), ("/a:/b:ro+rprivate", "'ro' or 'rw'"),
])
def test_bad_binds_are_refused(tmp_path, bind, why):
    problems = _problems(tmp_path, {"runtime": "apptainer", "image": "docker://p:1", "binds": [bind]})
    assert why in problems["environment.container.binds"], problems


def test_nv_is_apptainers_and_a_local_run_has_no_container(tmp_path):
    problems = _problems(tmp_path, {"runtime": "pyxis", "image": "nvcr.io#nvidia/paddle:24.01", "nv": True})
    assert "remove nv" in problems["environment.container.nv"]
    problems = _problems(tmp_path, {"runtime": "apptainer", "image": "docker://p:1"}, cluster={"backend": "local"})
    assert "cluster.backend: slurm" in problems["environment.container"]


def test_python_is_the_images_interpreter(tmp_path):
    box = {"runtime": "apptainer", "image": "docker://p:1"}
    assert render(_spec(tmp_path, box)).python == "python3"
    conda = "/opt/conda/bin/python"  # a path inside the image: kept as written, not resolved on this machine
    assert render(_spec(tmp_path, box, environment={"python": conda})).python == conda
    assert render(_spec(tmp_path, box, environment={"python": "python3.10"})).python == "python3.10"
    problems = _problems(tmp_path, box, environment={"python": "venv/bin/python"})
    assert "inside the image" in problems["environment.python"]
    r = render(_spec(tmp_path, box))
    assert r.host_python == sys.executable  # submit.sh's bookkeeping runs here, not in the image
    assert f'{shlex.quote(sys.executable)} -m ernie_cluster.frozen_code ensure "$run_dir" - "$@"' in r.submit_sh


@pytest.mark.parametrize("field,value", [("output_dir", "run dir"), ("output_dir", "run,x"),
                                         ("data.input_prefix", "/corpus")])
def test_directories_that_cannot_be_bound_are_refused_naming_their_field(tmp_path, field, value):
    values = {"output_dir": str(tmp_path / value)} if field == "output_dir" else {"data": {"input_prefix": value}}
    problems = _problems(tmp_path, {"runtime": "pyxis", "image": "nvcr.io#nvidia/paddle:24.01"}, check_paths=False,
                         **values)
    assert set(problems) == {field}
    assert "bound into the container" in problems[field] or "whole file" in problems[field]


def test_a_local_image_must_exist_and_is_frozen_absolute(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    box = {"runtime": "apptainer", "image": "images/p.sif"}
    assert "does not exist" in _problems(tmp_path, box)["environment.container.image"]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "p.sif").write_bytes(b"")
    assert _spec(tmp_path, box).environment.container.image == str(tmp_path / "images" / "p.sif")
    for image in ("docker://paddlepaddle/paddle:2.6.2", "oras://r/p:1", "library://u/c/p:1"):
        assert _spec(tmp_path, {"runtime": "apptainer", "image": image}).environment.container.image == image
    assert _spec(tmp_path, {"runtime": "pyxis", "image": "nvcr.io#nvidia/paddle:24.01"}) is not None
    assert "does not exist" in _problems(tmp_path, {"runtime": "pyxis", "image": "./p.sqsh"})[
        "environment.container.image"]
    # the CLI: validate refuses (exit 2, field and YAML line), render only warns
    spec = base_spec(tmp_path, environment={"container": {"runtime": "pyxis", "image": "/nowhere/p.sqsh"}})
    path = write_spec(tmp_path / "s.yaml", spec)
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if l.strip().startswith("image:"))
    assert main(["validate", str(path)]) == 2
    assert f"s.yaml:{line}: environment.container.image: /nowhere/p.sqsh does not exist" in capsys.readouterr().err
    assert main(["render", str(path)]) == 0
    assert "environment.container.image" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# the scripts run: hostile container values stay one argument
# ---------------------------------------------------------------------------

HOSTILE = "$(touch pwned) `touch pwned2` 'q\" ; x"


def test_hostile_image_and_env_stay_one_argument_in_the_scripts(tmp_path):
    s = _spec(tmp_path, {"runtime": "apptainer", "image": f"docker://p:1{HOSTILE}"}, name=f"n{HOSTILE}",
              environment={"env": {"TAG": HOSTILE}, "python": "ernie-py"})
    r = render(s)
    bin_dir, rec, work = tmp_path / "bin", tmp_path / "rec", tmp_path / "work"
    for d in (bin_dir, rec, work):
        d.mkdir()
    # stand-ins: each records its argv (NUL-separated) and the forwarded variable
    recorder = (f"#!/bin/bash\nprintf '%s\\0' \"$@\" > {rec}/$(basename $0).args\n"
                f"printf '%s' \"$APPTAINERENV_TAG\" > {rec}/$(basename $0).tag\n")
    for tool in ("srun", "ernie-py"):
        (bin_dir / tool).write_text(recorder)
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "n1"}
    prefix = container.exec_prefix(s)
    assert prefix[-1] == f"docker://p:1{HOSTILE}"
    expected = {"train.sbatch": ["--ntasks-per-node=1", "--kill-on-bad-exit=0", *prefix, "ernie-py", "-m",
                                 "ernie_cluster.launch", "--run-dir", str(s.run_dir())],
                "convert.sbatch": ["--ntasks=1", *prefix, "sh", "-c"]}
    for name, text in (("train.sbatch", r.train_sbatch), ("convert.sbatch", r.convert_sbatch)):
        (work / name).write_text(text)
        proc = subprocess.run(["bash", str(work / name)], cwd=work, env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        args = (rec / "srun.args").read_text().split("\0")[:-1]
        assert args[:len(expected[name])] == expected[name], args
        assert (rec / "srun.tag").read_text() == HOSTILE  # APPTAINERENV_TAG: the host's value wins in the image
    # the conversion's one step: `sh -c SCRIPT`; the script registers the job under its hostile name, then converts
    script = args[-1]
    proc = subprocess.run(["sh", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (rec / "ernie-py.args").read_text().split("\0")[:-1] == ["-m", "ernie_cluster.convert", "--run-dir",
                                                                    str(s.run_dir())]
    for where in (tmp_path, work):
        assert not list(where.glob("pwned*"))


# ---------------------------------------------------------------------------
# the frozen code: no pip freeze of an image
# ---------------------------------------------------------------------------


def test_frozen_code_without_a_compute_interpreter(tmp_path):
    from ernie_cluster.frozen_cli import main as frozen_main

    run = tmp_path / "run"
    assert frozen_main(["ensure", str(run), "-"]) == 0
    manifest = json.loads((run / "code" / "MANIFEST.json").read_text())
    assert manifest["pip_freeze"]["file"] is None and "container image" in manifest["pip_freeze"]["note"]
    assert frozen_main(["ensure", str(run), "-"]) == 0  # kept: nothing to compare but the files
