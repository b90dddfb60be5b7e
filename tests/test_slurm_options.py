"""The one source of every job's Slurm options (ernie_cluster/slurm_options.py), and the two forms derived from it:
the plain sbatch scripts' #SBATCH lines and the submitit parameters, checked on the real local Slurm too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict

import pytest
import yaml

from ernie_cluster.render import convert_executor_params, render, submitit_folder, submitit_sbatch_text
from ernie_cluster.slurm_options import (FORM_DIFFERENCES, SUBMITIT_OWN, Options, convert_options, sbatch_escape,
                                         sbatch_lines, submitit_written_options, train_options)
from ernie_cluster.spec import validate_text

from helpers_spec import base_spec
from test_spec_hostile import sbatch_options  # the #SBATCH lines read the way Slurm's sbatch reads them

PACKAGE = Path(__file__).resolve().parent.parent / "ernie_cluster"
NAME = "opts 'q' \"d\" \\ #x"
COMMENT = "c 'q' \\ # e \\"


def _spec(tmp_path: Path, cluster: Dict = None, nodes=2, **sections):
    cluster = {"partition": "debug", "account": "acct", "qos": "normal", "exclusive": True,
               "convert_partition": "low", "time": "00:10:30", "convert_time": "5",
               "extra_sbatch": {"comment": COMMENT, "mail-type": "END", "ntasks-per-core": "1"}, **(cluster or {})}
    if isinstance(nodes, str):  # a range: a global batch every count keeps (micro 4 x dp 2 x 3 = 4 x dp 3 x 2)
        sections["train"] = {"global_batch_size": 24, **sections.get("train", {})}
    raw = base_spec(tmp_path, name=NAME, output_dir=str(tmp_path / "run dir"), cluster=cluster,
                    resources={"nodes": nodes, "cpus_per_task": 2, "mem": "100M"},
                    environment={"setup": ["echo setup"], "env": {"TAG": "a b"}}, **sections)
    return validate_text(yaml.safe_dump(raw), "s.yaml", [])


def _as_read(options: Options) -> Dict[str, str]:
    """Options as sbatch reads them back from an #SBATCH line (a bare flag has no value)."""
    return {k: "" if v is True else str(v) for k, v in options.items()}


def _without(options: Dict[str, str], keys) -> Dict[str, str]:
    return {k: v for k, v in options.items() if k not in keys}


def test_no_private_function_of_another_library():
    private = re.compile(r"submitit\.[a-z_.]*\._|from submitit.* import _|_make_sbatch_string")
    for path in PACKAGE.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            # the module submitit's own batch script runs (`python -u -m submitit.core._submit`) is no call of ours
            assert not private.search(line.replace("-m submitit.core._submit", "")), f"{path}:{number}: {line}"


@pytest.mark.parametrize("requeue", [True, False])
def test_templates_print_the_one_source_lines(tmp_path, requeue):
    spec = _spec(tmp_path, cluster={"requeue": {"enabled": requeue, "signal_lead_s": 30}})
    r = render(spec)
    for text, options in ((r.train_sbatch, train_options(spec, "sbatch")), (r.convert_sbatch, convert_options(spec, "sbatch"))):
        assert [line for line in text.splitlines() if line.startswith("#SBATCH")] == sbatch_lines(options)
    train = dict(sbatch_options(r.train_sbatch))
    assert ("requeue" in train, "no-requeue" in train, train.get("signal")) == (
        (True, False, "B:USR2@30") if requeue else (False, True, None))
    assert train["time"] == "11" and dict(sbatch_options(r.convert_sbatch))["time"] == "5"  # minutes, rounded up


def test_submitit_parameters_carry_the_one_source_options(tmp_path):
    spec = _spec(tmp_path)
    r = render(spec)
    for job in (r.train, r.convert):
        written = submitit_written_options(job.executor_params, submitit_folder(r.run_dir))
        assert {k: written[k] for k in job.options} == {k: sbatch_escape(v) if isinstance(v, str) else v
                                                         for k, v in job.options.items()}
        assert set(written) - set(job.options) <= set(SUBMITIT_OWN) and "wckey" not in written
        read = sbatch_options(job.sbatch_text)  # the text render shows, read as sbatch reads it
        assert len(read) == len(written) and {k: v for k, v in read if k in job.options} == _as_read(job.options)


def test_the_two_forms_differ_only_where_documented(tmp_path):
    spec = _spec(tmp_path)
    r = render(spec)
    for plain, job in ((r.train_sbatch, r.train), (r.convert_sbatch, r.convert)):
        a, b = dict(sbatch_options(plain)), dict(sbatch_options(job.sbatch_text))
        assert _without(a, FORM_DIFFERENCES) == _without(b, FORM_DIFFERENCES)
        assert a["job-name"] == b["job-name"] == (NAME if job.kind == "train" else f"{NAME}-convert")
        assert a["comment"] == b["comment"] == COMMENT
    assert "ntasks-per-core" not in r.convert.options and r.train.options["ntasks-per-core"] == "1"


def test_a_node_range_is_written_once_and_lets_slurm_give_more_than_the_minimum(tmp_path):
    r = render(_spec(tmp_path, nodes="2-3"))
    folder = submitit_folder(r.run_dir)
    for text in (r.train_sbatch, r.train.sbatch_text):  # the plain script, and the file submitit writes
        read = sbatch_options(text)
        assert [v for k, v in read if k == "nodes"] == ["2-3"], text
        # --ntasks-per-node=1 would make sbatch ask for min x 1 tasks: Slurm then starts on 2 nodes of 3 free
        assert "ntasks-per-node" not in dict(read), text
    written = submitit_written_options(r.train.executor_params, folder)
    assert written["nodes"] == "2-3" and "ntasks-per-node" not in written
    assert r.train.executor_params["nodes"] == 2  # submitit's own count: the least the job starts on
    # the conversion job stays one task on one node; a fixed count keeps one launcher per node
    assert (r.convert.options["nodes"], r.convert.options["ntasks-per-node"]) == (1, 1)
    fixed = render(_spec(tmp_path, nodes=3)).train.options
    assert (fixed["nodes"], fixed["ntasks-per-node"]) == (3, 1)


def test_conversion_job_result_is_where_the_model_went(tmp_path, monkeypatch):
    from ernie_cluster import jobs
    from ernie_cluster.rundir import RunDir

    calls = []
    monkeypatch.setattr(jobs.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    for convert, expected in (({}, tmp_path / "run dir" / "converted"),
                              ({"output_dir": str(tmp_path / "models" / "m")}, tmp_path / "models" / "m")):
        spec = _spec(tmp_path, convert=convert)
        run = RunDir(spec.run_dir())
        run.root.mkdir(parents=True, exist_ok=True)
        run.spec.write_text(spec.to_yaml())
        assert jobs.ConvertJob(str(run.root))() == str(expected)
    assert calls[-1][1:] == ["-m", "ernie_cluster.convert", "--run-dir", str(tmp_path / "run dir")]


@pytest.mark.slurm
@pytest.mark.parametrize("nodes", [2, "2-3"])
def test_submitit_submits_exactly_the_one_source_options(slurm_cluster, tmp_path, monkeypatch, nodes):
    """submit through submitit (jobs held: nothing runs); submitit's own file carries the one source's options."""
    from submitit.core.utils import JobPaths

    from ernie_cluster.submit import submit_slurm

    monkeypatch.setenv("SBATCH_HOLD", "1")  # sbatch's environment form of --hold
    spec = _spec(tmp_path, nodes=nodes)
    r = render(spec)
    sub = submit_slurm(spec)
    try:
        folder = submitit_folder(r.run_dir)
        for kind, job_id in (("train", sub.train_job_id), ("convert", sub.convert_job_id)):
            written = JobPaths(folder, job_id=job_id).submission_file.read_text()
            assert (r.run_dir / "submit" / f"submitit.{kind}.sbatch").read_text() == written  # kept by submit
            if kind == "train":
                options, plain, shown = train_options(spec, "submitit"), r.train_sbatch, r.train.sbatch_text
            else:
                options, plain = convert_options(spec, "submitit", sub.train_job_id), r.convert_sbatch
                shown = submitit_sbatch_text(convert_executor_params(spec, sub.train_job_id), folder, r.python)
            assert written == shown  # render shows exactly the file submitit writes
            got = dict(sbatch_options(written))
            if kind == "train":  # once: submitit's own --nodes (the least) is replaced, not followed, by the range
                assert [v for k, v in sbatch_options(written) if k == "nodes"] == [str(nodes)], written
            assert {k: got.get(k) for k in options} == _as_read(options)
            assert set(got) - set(options) <= set(SUBMITIT_OWN) and "output" in got
            assert _without(got, FORM_DIFFERENCES) == _without(dict(sbatch_options(plain)), FORM_DIFFERENCES)
        # and Slurm read them so (the test cluster's accounting enforces nothing: it books an unknown account to the
        # user's default, so the account is not compared)
        # (a pending job's node count is Slurm's estimate: a range shows the least or the most nodes it may get)
        row = slurm_cluster.run("squeue", "-h", "-j", sub.train_job_id, "-o", "%j|%P|%q|%l|%k|%D").rstrip("\n")
        assert row.rsplit("|", 1)[0] == f"{NAME}|debug|normal|11:00|{COMMENT}"
        assert row.rsplit("|", 1)[1] in (["2"] if nodes == 2 else ["2", "3"]), row
        row = slurm_cluster.run("squeue", "-h", "-j", sub.convert_job_id, "-o", "%j|%P|%l|%D|%E").rstrip("\n")
        assert row == f"{NAME}-convert|low|5:00|1|afterok:{sub.train_job_id}(unfulfilled)"
    finally:
        slurm_cluster.run("scancel", *[j for j in (sub.train_job_id, sub.convert_job_id) if j], check=False)


@pytest.mark.slurm
@pytest.mark.parametrize("box", [
    {"runtime": "apptainer", "image": "docker://paddlepaddle/paddle:2.6.2", "binds": ["/scratch/c:/c:ro"]},
    {"runtime": "pyxis", "image": "nvcr.io#nvidia/paddle:24.01-py3", "binds": ["/scratch/c"]},
], ids=lambda box: box["runtime"])
def test_submitit_submits_the_container_lines_render_shows(slurm_cluster, tmp_path, monkeypatch, box):
    """environment.container through submitit (held, so nothing runs: neither runtime exists here): the file
    submitit writes is byte for byte what render shows, its srun line carrying the container's words."""
    import json
    import shlex

    from submitit.core.utils import JobPaths

    from ernie_cluster import container
    from ernie_cluster.submit import submit_slurm

    monkeypatch.setenv("SBATCH_HOLD", "1")
    raw = base_spec(tmp_path, name=NAME, output_dir=str(tmp_path / "run"),
                    cluster={"partition": "debug", "extra_sbatch": {"comment": COMMENT}},
                    environment={"setup": ["echo setup"], "env": {"TAG": "a b"}, "container": box})
    spec = validate_text(yaml.safe_dump(raw), "s.yaml", [])
    r = render(spec)
    sub = submit_slurm(spec)
    try:
        folder = submitit_folder(r.run_dir)
        srun_args, prefix = container.srun_options(spec), container.exec_prefix(spec)
        for kind, job_id in (("train", sub.train_job_id), ("convert", sub.convert_job_id)):
            written = JobPaths(folder, job_id=job_id).submission_file.read_text()
            shown = r.train.sbatch_text if kind == "train" else submitit_sbatch_text(
                convert_executor_params(spec, sub.train_job_id), folder, r.python, prefix)
            assert written == shown
            command = " ".join([shlex.join(["srun", "--unbuffered", "--output", f"{folder}/%j_%t_log.out", *srun_args,
                                            *prefix, "python3"]), "-u -m submitit.core._submit", str(folder)])
            assert command in written.splitlines(), written
        row = slurm_cluster.run("squeue", "-h", "-j", sub.train_job_id, "-o", "%j|%k").rstrip("\n")
        assert row == f"{NAME}|{COMMENT}"
        manifest = json.loads((r.run_dir / "code" / "MANIFEST.json").read_text())
        assert manifest["pip_freeze"]["file"] is None  # no pip freeze of an interpreter inside an image
    finally:
        slurm_cluster.run("scancel", *[j for j in (sub.train_job_id, sub.convert_job_id) if j], check=False)
