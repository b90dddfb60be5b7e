"""`python -m ernie_cluster plot RUN` on a real local run with a preemption: a PNG, and marks that match attempts.jsonl."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def preempted_run(main_command_run):
    """The README's main command, preempted once (conftest: shared with the console tests)."""
    assert main_command_run["rc"] == 0, main_command_run["out"][-4000:] + main_command_run["err"][-4000:]
    return main_command_run["run"]


def _expected_marks(run: Path):
    """From attempts.jsonl alone: each non-completed attempt's end at its step, then the next one's resume there
    (the stop writes a checkpoint at that step, and the next attempt resumes from it)."""
    records = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    expected = []
    for i, r in enumerate(records):
        if i > 0:
            expected.append((records[i - 1]["step"], "resume"))
        if r["reason"] != "completed":
            expected.append((r["step"], "requeue" if r["action"] == "requeue" else r["reason"]))
    return records, expected


def test_plot_marks_match_attempts(preempted_run, tmp_path):
    from ernie_cluster.plot import plot_run

    records, expected = _expected_marks(preempted_run)
    assert [r["reason"] for r in records] == ["stopped", "completed"]
    assert 0 < records[0]["step"] < 200

    out = tmp_path / "sub" / "loss.png"
    result = plot_run(str(preempted_run), str(out))
    assert [(m["step"], m["kind"]) for m in result["marks"]] == expected
    stop = result["marks"][0]
    assert stop["label"].startswith(f"{records[0]['cause']}") and stop["label"].count(f"@{records[0]['step']}") == 1
    assert [t["attempt"] for t in result["throughput"]] == [
        f"attempt-{r['job_id']}-{r['restart']}" for r in records]
    assert all(t["median_samples_per_s"] and t["median_samples_per_s"] > 0 for t in result["throughput"])

    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    import matplotlib.image

    image = matplotlib.image.imread(str(out))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_plot_cli(preempted_run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ernie_cluster", "plot", str(preempted_run)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    png = preempted_run / "plot.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, expected = _expected_marks(preempted_run)
    for step, kind in expected:
        assert f"{kind:<8} step {step}:" in proc.stdout, proc.stdout

    # not a run directory: exit 2, nothing written
    proc = subprocess.run([sys.executable, "-m", "ernie_cluster", "plot", str(tmp_path), "--out",
                           str(tmp_path / "x.png")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr
    assert not (tmp_path / "x.png").exists()

    # a run directory with no training steps logged yet: exit 2
    (tmp_path / "state.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "ernie_cluster", "plot", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no training steps logged" in proc.stderr
    assert not (tmp_path / "plot.png").exists()
