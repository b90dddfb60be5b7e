"""The README's main command without a terminal: plain lines (no ANSI, no carriage returns), the events and the
summary, and every detailed log still in the run directory. `status --follow` beside it while it runs, and on
the finished run; `status RUN > file` with full values. Real runs: CPU paddle, the local backend."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EVENT = re.compile(r"^\d\d:\d\d:\d\d (\S+) +(.*)$")
SUMMARY = re.compile(r"^(run \S+ after \S+|  (attempts|steps lost|final loss|converted model): +.*)$")
TRAIN = re.compile(r"\bstep (\d+)/200 \| loss ([\d.]+)")


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ernie_cluster", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=kw.pop("timeout", 120), **kw)


@pytest.fixture
def main_run(main_command_run):
    """The README's main command with `status --follow` beside it (conftest: one run for this module and plot's)."""
    return main_command_run


def _check_plain(text: str) -> list:
    assert "\x1b" not in text and "\r" not in text, "terminal codes in plain output"
    return text.splitlines()


def _kinds(lines: list) -> list:
    return [m.group(1) for m in map(EVENT.match, lines) if m]


def test_main_command_prints_plain_lines_events_and_summary(main_run):
    run, out = main_run["run"], main_run["out"]
    assert main_run["rc"] == 0, out[-3000:] + main_run["err"][-3000:]
    lines = _check_plain(out)
    assert lines[0].startswith("[ernie_cluster local] code frozen:")  # submit's own line, before the console
    for line in lines[1:]:  # every other line is an event or a summary line: no paddle dump, no banners
        assert EVENT.match(line) or SUMMARY.match(line), line
    assert "LAUNCH INFO" not in out and "tokenizer config file saved" not in out
    kinds = _kinds(lines)
    for kind in ("start", "signal", "preempted", "requeue", "resume", "checkpoint", "progress", "completed",
                 "convert", "converted"):
        assert kind in kinds, (kind, out)
    assert kinds.index("preempted") < kinds.index("requeue") < kinds.index("resume") < kinds.index("completed")

    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    assert [a["reason"] for a in attempts] == ["stopped", "completed"]
    worker = (run / "logs" / f"attempt-{attempts[1]['job_id']}-1" / "node0" / "workerlog.0").read_text()
    resumed = int(re.search(r"resumed from .*: step (\d+)", worker).group(1))
    step, loss = TRAIN.findall(worker)[-1]
    summary = lines[-5:]
    assert summary[0].startswith("run COMPLETED after ")
    assert summary[1] == "  attempts:        2 (1 signal, requeued; 1 completed)"
    assert summary[2] == f"  steps lost:      {max(0, attempts[0]['step'] - resumed)} (computed again after resumes)"
    assert summary[3] == f"  final loss:      {float(loss):.6f} at step {step}/200" and step == "200"
    assert summary[4] == f"  converted model: {run / 'converted'} (verified)"
    assert (run / "converted" / "convert_report.json").exists()


def test_the_run_directory_still_holds_every_log(main_run):
    run = main_run["run"]
    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    job = attempts[0]["job_id"]
    output = (run / "logs" / f"{job}.out").read_text()  # what the terminal showed before the console
    for text in ("[ernie_cluster local] attempt 0:", "[ernie_cluster local] simulated preemption",
                 "[ernie_cluster.launch node 0/1] received SIGUSR2", "LAUNCH INFO", "Exit code 0",
                 "[ernie_cluster local] conversion:", "converted step 200", "[ernie_cluster local] converted model:"):
        assert text in output, text
    for restart in (0, 1):
        node = run / "logs" / f"attempt-{job}-{restart}" / "node0"
        assert "step 10/200" in (node / "workerlog.0").read_text() or restart == 1
        assert "paddle launcher exited with 0" in (node / "launcher.log").read_text()
        assert list(node.glob("ernie-tiny-local-*.log")), "paddle's pod log"
    logs = cli("logs", str(run), "--lines", "5")
    assert logs.returncode == 0 and f"==> logs/{job}.out <==" in logs.stdout


def test_status_follow_beside_the_live_run(main_run):
    assert main_run["follow_rc"] == 0, main_run["follow_out"][-3000:] + main_run["follow_err"][-3000:]
    lines = _check_plain(main_run["follow_out"])
    kinds = _kinds(lines)
    for kind in ("start", "preempted", "requeue", "resume", "completed", "converted", "progress"):
        assert kind in kinds, (kind, main_run["follow_out"])
    assert lines[-5].startswith("run COMPLETED after ")
    assert lines[-4:] == main_run["out"].splitlines()[-4:]  # the same attempts, steps lost, loss and model


def test_status_follow_on_the_finished_run(main_run):
    t0 = time.monotonic()
    proc = cli("status", str(main_run["run"]), "--follow", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 30
    lines = _check_plain(proc.stdout)
    kinds = _kinds(lines)
    assert kinds.count("start") == 2 and kinds.count("checkpoint") == 1  # a replay: the latest checkpoint only
    assert "progress" not in kinds
    assert lines[-5].startswith("run COMPLETED after ") and lines[-4:] == main_run["out"].splitlines()[-4:]


def test_status_into_a_file_holds_full_values(main_run, tmp_path):
    run = main_run["run"]
    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    target = tmp_path / "status.txt"
    with open(target, "w") as f:  # a file, not a terminal: COLUMNS is no limit either
        subprocess.run([sys.executable, "-m", "ernie_cluster", "status", str(run)], cwd=REPO, stdout=f, check=True,
                       timeout=120, env={**os.environ, "COLUMNS": "40"})
    text = target.read_text()
    assert "…" not in text and "\x1b" not in text
    for i, a in enumerate(attempts):
        row = next(line.split("│")[1:-1] for line in text.splitlines() if line.startswith(f"│ {i} │"))
        assert [cell.strip() for cell in row] == [
            str(i), a["job_id"], str(a["restart"]), str(a["nodes"]),
            *(time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(a[k])) for k in ("started", "ended")),
            a["reason"], a["cause"] or "", str(a["step"]), a["action"]]
    assert "progress: step 200/200, loss " in text and "(attempt-" in text
    data = json.loads(cli("status", str(run), "--json").stdout)
    assert {"run_dir", "name", "backend", "jobs", "attempts", "checkpoint", "conversion", "max_steps", "data",
            "causes", "nodes", "watchdog"} <= set(data)  # the keys before this console: kept
    assert data["progress"]["step"] == 200 and data["progress"]["eta_s"] is None and data["waiting"] == []


def test_verbose_streams_the_jobs_output(tmp_path):
    run = tmp_path / "run"
    proc = cli("submit", "jobs/ernie_tiny_local.yaml", "--verbose", f"output_dir={run}", "train.max_steps=20",
               "train.checkpoint_steps=20", "train.save_steps=20", "convert.enabled=false",
               f"data.input_prefix={tmp_path / 'data' / 'toy'}", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "LAUNCH INFO" in proc.stdout and "step 20/20 | loss" in proc.stdout
    assert proc.stdout.splitlines()[-5].startswith("run COMPLETED after ")
    job = json.loads((run / "state.json").read_text())["supervisor_pid"]
    assert "LAUNCH INFO" in (run / "logs" / f"local{job}.out").read_text()


def test_status_follow_on_a_terminal_draws_the_live_view(main_run):
    """The same on a terminal (a pseudo-terminal here): rich's view, then the plain summary."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "ernie_cluster", "status", str(main_run["run"]), "--follow"],
                              cwd=REPO, stdout=slave, stderr=subprocess.PIPE, timeout=60,
                              env={**os.environ, "TERM": "xterm", "COLUMNS": "200"})
        os.close(slave)
        data = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's other side is closed: all read
                break
            if not chunk:
                break
            data += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0, proc.stderr
    text = data.decode(errors="replace")
    assert "\x1b[" in text  # a terminal gets colours and the live panel
    assert "run COMPLETED after " in text and f"converted model: {main_run['run'] / 'converted'} (verified)" in text
    assert "preempted" in text and "requeue" in text


def test_a_crash_shows_as_failure_requeue_and_steps_lost(tmp_path):
    """A trainer crash after the step-50 checkpoint (the trainers' test hook, once): the failure and requeue are
    event lines, the resume says how many steps it computes again, and the summary counts them."""
    run = tmp_path / "run"
    proc = cli("submit", "jobs/ernie_tiny_local.yaml", f"output_dir={run}", "train.max_steps=100",
               "train.checkpoint_steps=50", "train.save_steps=100", "convert.enabled=false",
               f"data.input_prefix={tmp_path / 'data' / 'toy'}", timeout=600,
               env={**os.environ, "ERNIE_CLUSTER_TEST_CRASH_ONCE": f"75:{tmp_path / 'crashed'}"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = _check_plain(proc.stdout)
    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    assert [(a["reason"], a["cause"], a["action"]) for a in attempts] == [("failed", "crashed", "requeue"),
                                                                         ("completed", None, "none")]
    worker = (run / "logs" / f"attempt-{attempts[1]['job_id']}-1" / "node0" / "workerlog.0").read_text()
    resumed = int(re.search(r"resumed from .*: step (\d+)", worker).group(1))
    lost = attempts[0]["step"] - resumed
    assert lost > 0
    events = {m.group(1): m.group(2) for m in map(EVENT.match, lines) if m}
    assert events["failed"].startswith(f"attempt 0 failed at step {attempts[0]['step']} (crashed): ")
    assert "simulated transient fault" in events["failed"] and events["requeue"].startswith("attempt 0 requeued")
    assert events["resume"].endswith(f"; {lost} step(s) to compute again")
    assert f"  steps lost:      {lost} (computed again after resumes)" in lines
    assert "  attempts:        2 (1 crashed, requeued; 1 completed)" in lines
