"""Rendering: golden sbatch text for the seed's configuration, and hostile values staying values."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ernie_cluster.cli import main
from ernie_cluster.render import render
from ernie_cluster.spec import load_spec, validate_text

from helpers_spec import base_spec, write_spec

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


def _dapt():
    return render(load_spec(REPO / "jobs" / "ernie_dapt.yaml", check_paths=False))


@pytest.mark.parametrize("name,attr", [
    ("ernie_dapt.train.sbatch", "train_sbatch"),
    ("ernie_dapt.convert.sbatch", "convert_sbatch"),
    # what `render` prints for each submitit job: its parameters, then the file submitit writes from them
    ("ernie_dapt.submitit.train.txt", "submitit_train"),
    ("ernie_dapt.submitit.convert.txt", "submitit_convert"),
    ("ernie_dapt.submit.sh", "submit_sh"),
])
def test_golden_render_of_the_seed_configuration(name, attr):
    rendered = _dapt()
    text = {
        "train_sbatch": rendered.train_sbatch,
        "convert_sbatch": rendered.convert_sbatch,
        "submitit_train": rendered.train.describe(),
        "submitit_convert": rendered.convert.describe(),
        "submit_sh": rendered.submit_sh,
    }[attr]
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"rendered text differs from {golden}; rerun with UPDATE_GOLDEN=1 if intended"


def test_golden_render_of_a_node_range():
    """The seed's run on 2 to 4 nodes (elastic): the global batch every count keeps (32 x lcm(16, 24, 32) x 1)."""
    spec = load_spec(REPO / "jobs" / "ernie_dapt.yaml", ["resources.nodes=2-4", "train.global_batch_size=3072"],
                     check_paths=False)
    text = render(spec).train_sbatch
    golden = GOLDEN / "ernie_dapt_elastic.train.sbatch"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"rendered text differs from {golden}; rerun with UPDATE_GOLDEN=1 if intended"
    options = [line for line in text.splitlines() if line.startswith("#SBATCH --n")]
    assert options == ["#SBATCH --nodes=2-4"]  # and no --ntasks-per-node: srun starts one launcher per node


def test_seed_render_has_the_essentials():
    r = _dapt()
    assert "#SBATCH --nodes=4" in r.train_sbatch and "#SBATCH --gpus-per-node=8" in r.train_sbatch
    assert "#SBATCH --signal=B:USR2@180" in r.train_sbatch and "#SBATCH --requeue" in r.train_sbatch
    assert "#SBATCH --open-mode=append" in r.train_sbatch
    assert (r.convert.options["dependency"], r.convert.options["kill-on-invalid-dep"]) == ("afterok:<train job id>", "yes")
    assert r.train.describe() in r.describe() and r.convert.describe() in r.describe()
    # submitit's warning goes to every srun task (each node's launcher), not only the batch shell
    assert "#SBATCH --signal=USR2@180" in r.train.sbatch_text


def test_render_cli_submits_and_writes_nothing(tmp_path, capsys):
    spec = base_spec(tmp_path)
    path = write_spec(tmp_path / "s.yaml", spec)
    assert main(["render", str(path)]) == 0
    out = capsys.readouterr().out
    assert "submitit: training job" in out and "-m ernie_cluster.launch" not in out  # submitit form by default
    assert main(["submit", "--dry-run", str(path)]) == 0
    assert capsys.readouterr().out == out
    assert main(["render", "--sbatch", str(path)]) == 0
    assert "-m ernie_cluster.launch --run-dir" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_render_does_not_import_paddle_and_is_fast(tmp_path):
    path = write_spec(tmp_path / "s.yaml", base_spec(tmp_path))
    code = ("import sys, time; t=time.perf_counter(); from ernie_cluster.cli import main; rc=main(['render', %r]); "
            "assert 'paddle' not in sys.modules, 'render imported paddle'; "
            "print('elapsed', time.perf_counter()-t, file=sys.stderr); sys.exit(rc)" % str(path))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    # The brief's budget is 0.5 s for render; whole-process wall time includes the interpreter start.
    assert wall < 2.0, f"render took {wall:.2f}s"


# Never a payload that harms the machine if it runs: a broken quoting once ran these scripts' commands.
HOSTILE = "x; rm -rf canary $(touch pwned) `touch pwned2` 'q\" \\"


def test_hostile_values_stay_values_in_the_sbatch_script(tmp_path):
    """Run the rendered script with bash, srun replaced by a recorder: names and values arrive verbatim."""
    spec = base_spec(tmp_path, name=HOSTILE, output_dir=str(tmp_path / "run dir; touch pwned3"),
                     environment={"env": {"DOMAIN_TAG": HOSTILE}})
    s = validate_text(yaml.safe_dump(spec), "hostile.yaml", [])
    rendered = render(s)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "srun.args"
    fake_srun = bin_dir / "srun"
    fake_srun.write_text(f"#!/bin/bash\nprintf '%s\\n' \"$@\" > {record}\nprintf '%s' \"$DOMAIN_TAG\" > {record}.env\n")
    fake_srun.chmod(fake_srun.stat().st_mode | stat.S_IEXEC)
    script = tmp_path / "train.sbatch"
    script.write_text(rendered.train_sbatch)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "canary").mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1",
           "HOME": str(tmp_path / "home")}
    proc = subprocess.run(["bash", str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    args = record.read_text().splitlines()
    assert args[args.index("--run-dir") + 1] == str(tmp_path / "run dir; touch pwned3")
    assert (tmp_path / "srun.args.env").read_text() == HOSTILE
    assert (workdir / "canary").is_dir()
    for leftover in ("pwned", "pwned2", "pwned3"):
        assert not (workdir / leftover).exists() and not (tmp_path / leftover).exists()
    # the job name is one quoted sbatch value; its backslash doubled, since sbatch reads '\\' as an escape even
    # inside single quotes (plain shlex.quote made sbatch refuse this script: "Unmatched `'`")
    from ernie_cluster.slurm_options import sbatch_quote
    assert f"#SBATCH --job-name={sbatch_quote(HOSTILE)}" in rendered.train_sbatch
    assert sbatch_quote(HOSTILE) == __import__('shlex').quote(HOSTILE.replace("\\", "\\\\"))


def test_sbatch_scripts_are_valid_bash(tmp_path):
    r = _dapt()
    for text in (r.train_sbatch, r.convert_sbatch):
        script = tmp_path / "s.sh"
        script.write_text(text)
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def _run_train_script(tmp_path, srun_body: str, setup: list, signal_after_s: float, sig: str):
    """Run the rendered train.sbatch with bash and a stand-in srun; send `sig` to the batch shell once."""
    spec = base_spec(tmp_path, environment={"setup": setup})
    rendered = render(validate_text(yaml.safe_dump(spec), "s.yaml", []))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "srun").write_text("#!/bin/bash\n" + srun_body)
    (bin_dir / "srun").chmod(0o755)
    script = tmp_path / "train.sbatch"
    script.write_text(rendered.train_sbatch)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1"}
    env.pop("ERNIE_CLUSTER_STOP_REQUESTED", None)
    proc = subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    time.sleep(signal_after_s)
    proc.send_signal(getattr(__import__("signal"), f"SIG{sig}"))
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


def test_batch_shell_passes_a_term_on_as_the_checkpoint_signal_and_keeps_srun_status(tmp_path):
    # srun stand-in: wait for USR2 (what the launchers treat as "checkpoint and stop"), then exit 75.
    body = f"trap 'echo got-usr2 > {tmp_path}/srun.sig; exit 75' USR2\necho started > {tmp_path}/srun.up\n" \
           "for i in $(seq 200); do sleep 0.1; done\nexit 3\n"
    code, out = _run_train_script(tmp_path, body, [], 1.5, "TERM")
    assert (tmp_path / "srun.up").exists(), out
    assert (tmp_path / "srun.sig").read_text().strip() == "got-usr2", out
    assert code == 75, out  # srun's status, not the shell's 128+15


def test_warning_during_setup_reaches_the_launchers_through_the_environment(tmp_path):
    body = f"printf '%s' \"${{ERNIE_CLUSTER_STOP_REQUESTED:-}}\" > {tmp_path}/srun.env\nexit 75\n"
    code, out = _run_train_script(tmp_path, body, ["sleep 2"], 0.7, "USR2")
    assert code == 75, out
    assert (tmp_path / "srun.env").read_text() == "USR2:1:0", out  # signal:job id:restart count


def test_rendered_submit_sh_chains_and_records_both_jobs(tmp_path):
    run = tmp_path / "run dir"
    out = tmp_path / "scripts"
    spec = base_spec(tmp_path, name="x; touch pwned", output_dir=str(run))
    path = write_spec(tmp_path / "spec.yaml", spec)
    assert main(["render", str(path), "--sbatch", "--out", str(out)]) == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # stand-in sbatch: records its arguments, answers like --parsable (id;cluster)
    (bin_dir / "sbatch").write_text(f"#!/bin/bash\nprintf '%s\\n' \"$*\" >> {tmp_path}/sbatch.log\n"
                                    f"n=$(wc -l < {tmp_path}/sbatch.log); echo \"$((700 + n));cluster\"\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run([str(out / "submit.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "training job: 701" in proc.stdout and "conversion job: 702 (afterok:701)" in proc.stdout
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    assert calls == [f"--parsable {out}/train.sbatch",
                     f"--parsable --dependency=afterok:701 --kill-on-invalid-dep=yes {out}/convert.sbatch"]
    import json
    state = json.loads((run / "state.json").read_text())
    assert (state["train_job_id"], state["convert_job_id"], state["name"]) == ("701", "702", "x; touch pwned")
    assert not (tmp_path / "pwned").exists() and not (out / "pwned").exists()


def test_extra_sbatch_reaches_the_conversion_job_except_training_only_options(tmp_path):
    extra = {"mail-type": "END", "reservation": "maint", "gpus-per-task": "1", "ntasks-per-socket": "2",
             "kill-on-invalid-dep": "no"}
    r = render(validate_text(yaml.safe_dump(base_spec(tmp_path, cluster={"extra_sbatch": extra})), "s.yaml", []))
    for key, value in extra.items():  # training gets every option
        assert f"#SBATCH --{key}={value}" in r.train_sbatch and f"#SBATCH --{key}={value}" in r.train.sbatch_text
    shared = {"mail-type": "END", "reservation": "maint"}
    assert {k: v for k, v in r.convert.executor_params["additional_parameters"].items() if k in extra} == {
        **shared, "kill-on-invalid-dep": "yes"}
    for text in (r.convert_sbatch, r.convert.sbatch_text):
        options = [l for l in text.splitlines() if l.startswith("#SBATCH --")]
        assert all(f"#SBATCH --{k}={v}" in options for k, v in shared.items()), text
        assert not any("gpus-per-task" in l or "ntasks-per-socket" in l for l in options), text
        # the chain's own setting is kept: a failed training still cancels the conversion
        assert [l for l in options if "kill-on-invalid-dep" in l] == ["#SBATCH --kill-on-invalid-dep=yes"], text
