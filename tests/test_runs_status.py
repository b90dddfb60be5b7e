"""`python -m ernie_cluster status` finds the converted model where the conversion wrote it: RUN/converted,
or the spec's convert.output_dir. No Slurm, no paddle (a local-backend run directory built by hand)."""

from __future__ import annotations

import json
from pathlib import Path

from test_launch import make_run

from ernie_cluster.runs import collect_status, print_status
from ernie_cluster.rundir import CONVERT_REPORT

REPORT = {"passed": True, "max_abs_diff": 1.5e-06}


def _local_run(tmp_path: Path, **over):
    run = make_run(tmp_path, cluster={"backend": "local"}, **over)
    run.write_state({"backend": "local", "name": "x", "supervisor_pid": 0, "local_state": "COMPLETED"})
    return run


def test_status_shows_a_conversion_in_convert_output_dir(tmp_path: Path, capsys) -> None:
    elsewhere = tmp_path / "models" / "ernie-dapt"
    run = _local_run(tmp_path, convert={"output_dir": str(elsewhere)})
    elsewhere.mkdir(parents=True)
    (elsewhere / CONVERT_REPORT).write_text(json.dumps(REPORT))
    status = collect_status(run)
    assert status.conversion == {**REPORT, "model_dir": str(elsewhere.resolve())}
    print_status(status)
    shown = capsys.readouterr().out
    assert "converted model: not yet" not in shown and "verification passed" in shown
    assert not run.converted.exists()


def test_status_shows_a_conversion_in_the_run_directory(tmp_path: Path) -> None:
    run = _local_run(tmp_path)
    assert collect_status(run).conversion == {}
    run.converted.mkdir()
    (run.converted / CONVERT_REPORT).write_text(json.dumps(REPORT))
    assert collect_status(run).conversion == {**REPORT, "model_dir": str(run.converted)}


def test_status_with_a_damaged_spec_copy_still_looks_in_the_run_directory(tmp_path: Path) -> None:
    run = _local_run(tmp_path, convert={"output_dir": str(tmp_path / "elsewhere")})
    run.spec.write_text("name: [unclosed\n")
    run.converted.mkdir()
    (run.converted / CONVERT_REPORT).write_text("{not json")
    status = collect_status(run)
    assert status.max_steps is None
    assert status.conversion == {"error": f"unreadable {CONVERT_REPORT}", "model_dir": str(run.converted)}
