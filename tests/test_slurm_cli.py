"""ernie_cluster.slurm: the one Slurm time parser, and "Slurm did not answer" kept apart from "no such job"."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ernie_cluster import slurm
from ernie_cluster.launch.cluster_env import parse_slurm_duration
from ernie_cluster.launch.node import NodeLauncher
from ernie_cluster.spec import slurm_time_to_seconds

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- times ---

@pytest.mark.parametrize("text, seconds", [
    ("30", 1800),                 # M (a bare number is minutes, as in sbatch --time)
    ("0", 0),
    ("10:00", 600),               # M:S
    ("1:30", 90),
    ("1:00:00", 3600),            # H:M:S
    ("48:00:00", 172800),
    ("2-00:00:00", 172800),       # D-H:M:S
    ("1-2", 93600),               # D-H
    ("1-2:30", 95400),            # D-H:M
    ("1-02:03:04", 93784),
    (" 15 ", 900),                # surrounding blanks are ignored
])
def test_slurm_time_formats(text, seconds):
    assert slurm.slurm_time_to_seconds(text) == seconds
    assert slurm_time_to_seconds is slurm.slurm_time_to_seconds  # spec has no parser of its own


@pytest.mark.parametrize("text, message", [
    ("UNLIMITED", "is not a Slurm time; use minutes"),
    ("INVALID", "is not a Slurm time; use minutes"),
    ("Partition_Limit", "is not a Slurm time; use minutes"),
    ("NOT_SET", "is not a Slurm time; use minutes"),
    ("1h", "is not a Slurm time; use minutes"),
    ("", "is not a Slurm time; use minutes"),
    ("1:2:3:4", "is not a Slurm time; use minutes"),
    ("1-", "'1-' is not a Slurm time"),
    ("-5", "'-5' is not a Slurm time"),
    ("x-1", "'x-1' is not a Slurm time"),
    ("1-2:3:4:5", "'1-2:3:4:5' is not a Slurm time"),
    ("1-2-3", "'1-2-3' is not a Slurm time"),
])
def test_slurm_time_refusals(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        slurm.slurm_time_to_seconds(text)


def test_slurm_time_must_be_text():
    with pytest.raises(ValueError, match="must be a string"):
        slurm.slurm_time_to_seconds(90)  # type: ignore[arg-type]


@pytest.mark.parametrize("text, seconds", [
    ("45", 45),                   # squeue prints seconds; a bare number there is seconds
    ("1:30", 90),
    ("01:00:05", 3605),
    ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
    ("1-2", 93600),
    ("0:00", 0),
    (" 5:00\n", 300),
    ("UNLIMITED", None), ("NOT_SET", None), ("INVALID", None), ("Partition_Limit", None),
    ("", None), (None, None), ("1:2:3:4", None), ("1-", None), ("N/A", None),
])
def test_printed_durations(text, seconds):
    assert slurm.parse_duration(text) == seconds
    assert parse_slurm_duration(text) == seconds  # the node launcher's name for the same parser


def test_slurm_module_is_stdlib_only():
    code = ("import sys, ernie_cluster.slurm; "
            "print(sorted(m for m in ('pydantic', 'yaml', 'jinja2', 'submitit', 'paddle') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------ stand-in tools ---

@pytest.fixture
def bindir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", f"{d}:/usr/bin:/bin")
    return d


def _stub(bindir: Path, name: str, body: str) -> None:
    (bindir / name).write_text("#!/bin/sh\n" + body)
    (bindir / name).chmod(0o755)


def test_missing_tool_is_no_answer(bindir, monkeypatch):
    monkeypatch.setenv("PATH", str(bindir))  # nothing else: the real Slurm client may be in /usr/bin
    out = slurm.show_job("42")
    assert isinstance(out, slurm.NoAnswer) and not out.answered and not out.ok
    assert out.reason == "scontrol not found on PATH" and out.stdout == "" and out.rows() == []
    assert isinstance(slurm.sinfo_partitions(), slurm.NoAnswer)


def test_hung_tool_is_no_answer(bindir):
    _stub(bindir, "squeue", "exec sleep 30\n")
    t0 = time.monotonic()
    out = slurm.squeue("%T", ["42"], timeout=0.5)
    assert isinstance(out, slurm.NoAnswer) and "timed out" in out.reason
    assert time.monotonic() - t0 < 10


def test_refusal_is_an_answer(bindir):
    _stub(bindir, "scontrol", "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1\n")
    out = slurm.show_job("42")
    assert isinstance(out, slurm.Reply) and out.answered and not out.ok
    assert out.error == "slurm_load_jobs error: Invalid job id specified"
    _stub(bindir, "scontrol", "exit 3\n")
    assert slurm.show_job("42").error == "exit 3"


def test_job_states_tell_no_answer_from_no_such_job(bindir, monkeypatch):
    _stub(bindir, "squeue", "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1\n")
    _stub(bindir, "sacct", "echo 'sacct: error: Problem talking to the database' >&2; exit 1\n")
    assert slurm.job_states(["7", ""]) == {"7": ("UNKNOWN", "squeue/sacct did not answer")}
    _stub(bindir, "squeue", "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1\n")
    _stub(bindir, "sacct", "exit 0\n")  # both answered, neither knows it: no such job
    assert slurm.job_states(["7"]) == {}
    monkeypatch.setitem(slurm.TIMEOUTS, "query", 0.5)
    _stub(bindir, "sacct", "exec sleep 30\n")  # squeue answered, sacct hung: cannot tell
    assert slurm.job_states(["7"]) == {"7": ("UNKNOWN", "squeue/sacct did not answer")}
    assert slurm.job_states([]) == {}


def test_arguments_reach_the_tools(bindir, tmp_path):
    log = tmp_path / "argv"
    for name in ("scancel", "scontrol", "sacct", "squeue", "sbatch", "sinfo"):
        _stub(bindir, name, f'echo "{name} $*" >> "{log}"; echo "12;cl"\n')
    slurm.scancel(["5", "6"], signal="USR2")
    slurm.scancel(["5"])
    slurm.show_job("5", one_line=True)
    slurm.show_node("n1")
    slurm.sacct("JobID,State", ["5", "6"], duplicates=True)
    slurm.squeue("%i|%T", ["5"])
    slurm.squeue("%i")
    assert slurm.parsable_job_id(slurm.sbatch(["-p", "low", "--wrap", "true"])) == "12"
    assert slurm.sinfo_partitions() == ["12;cl"]
    assert log.read_text().splitlines() == [
        "scancel --signal=USR2 5 6", "scancel 5", "scontrol show job -o 5",
        "scontrol show node n1 -o", "sacct -n -P -X --duplicates -j 5,6 -o JobID,State",
        "squeue -h -j 5 -o %i|%T", "squeue -h -o %i", "sbatch --parsable -p low --wrap true", "sinfo -h -o %R"]


def test_env_path_finds_the_tool(tmp_path):
    """A caller's env (the node launcher's) names the PATH the tool is found on, and the tool runs with it."""
    d = tmp_path / "nodebin"
    d.mkdir()
    _stub(d, "scontrol", 'echo "NodeName=$3 NodeAddr=$MARK"\n')
    out = slurm.show_node("n1", env={"PATH": f"{d}:/usr/bin:/bin", "MARK": "10.1.2.3"})
    assert out.ok and out.stdout.strip() == "NodeName=n1 NodeAddr=10.1.2.3"


def test_node_launcher_slurm_command_messages(tmp_path):
    d = tmp_path / "nodebin"
    d.mkdir()
    cenv = SimpleNamespace(env={"PATH": str(d)})  # the stand-ins need nothing else
    assert NodeLauncher._slurm_command(None, cenv, "scancel", "5") == (False, "scancel not found on PATH")
    _stub(d, "scancel", "echo 'scancel: error: Kill job error on job id 5: Invalid job id specified' >&2; exit 1\n")
    assert NodeLauncher._slurm_command(None, cenv, "scancel", "5") == (
        False, "scancel: error: Kill job error on job id 5: Invalid job id specified")
    _stub(d, "scancel", "exit 0\n")
    assert NodeLauncher._slurm_command(None, cenv, "scancel", "5") == (True, "")


# ----------------------------------------------------------- real Slurm ---

@pytest.mark.slurm
def test_real_slurm_no_such_job_is_an_answer(slurm_cluster):
    names = slurm.sinfo_partitions()
    assert not isinstance(names, slurm.NoAnswer) and {"low", "high"} <= {n.rstrip("*") for n in names}
    out = slurm.show_job("999999")
    assert out.answered and not out.ok and "Invalid job id" in out.error
    assert slurm.squeue("%T", ["999999"]).answered
    assert slurm.job_states(["999999"]) == {}  # no such job: absent, not UNKNOWN
    assert slurm.restart_count("999999") is None and slurm.job_attempts("999999") == []


@pytest.mark.slurm
def test_real_slurm_held_job_round_trip(slurm_cluster, tmp_path):
    out = slurm.sbatch(["--hold", "-J", "slurm-cli-test", "-o", "/dev/null", "--wrap", "true"])
    assert out.ok, out.error
    job_id = slurm.parsable_job_id(out)
    try:
        assert slurm.job_states([job_id])[job_id][0] == "PENDING"
        show = slurm.show_job(job_id, one_line=True)
        assert show.ok and f"JobId={job_id}" in show.stdout
        assert slurm.restart_count(job_id) == 0
        limit = slurm.squeue("%l", [job_id]).stdout.strip()  # the time limit as squeue prints it
        assert (slurm.parse_duration(limit) or 0) > 0 or limit in ("UNLIMITED", "INVALID", "Partition_Limit"), limit
    finally:
        assert slurm.scancel([job_id]).ok
    deadline = time.monotonic() + 30
    while slurm.job_states([job_id]).get(job_id, ("",))[0] != "CANCELLED" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert slurm.job_states([job_id])[job_id][0] == "CANCELLED"


@pytest.mark.slurm
def test_real_slurm_unreachable_through_stand_in(slurm_cluster, bindir, monkeypatch):
    """The same questions when the tools fail the way an unreachable controller makes them fail."""
    _stub(bindir, "squeue", "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1\n")
    _stub(bindir, "sacct", "exec sleep 60\n")  # a hung database
    monkeypatch.setitem(slurm.TIMEOUTS, "query", 1.0)
    t0 = time.monotonic()
    assert slurm.job_states(["999999"]) == {"999999": ("UNKNOWN", "squeue/sacct did not answer")}
    assert time.monotonic() - t0 < 15
