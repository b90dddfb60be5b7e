"""The benchmark harness (bench/): row format and table, crash isolation, README section rewrite. Fast, no Slurm."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from bench.common import ROW_KEYS, make_row, measure, normalize_row, print_table, status_row, summarize  # noqa: E402


def fake_rows():
    return [
        make_row("tokens_per_s", 2000.0, "tokens/s", baseline="reference loader", baseline_value=100.0,
                 higher_is_better=True, goal=">= 20x", goal_met=True, runs=[1900.0, 2000.0, 2100.0],
                 spread={"min": 1900.0, "max": 2100.0, "iqr": 100.0}, machine="test box"),
        make_row("render_cli_s", 0.8, "s", baseline="python -c pass", baseline_value=0.02, goal="< 0.5 s",
                 goal_met=False, runs=[0.8], machine="test box", note="slow | on purpose"),
        status_row("bench_preempt", "skipped", "skipped: needs Slurm"),
        status_row("bench_crash", "failed", "exited 1: boom"),
    ]


def test_rows_have_the_common_format_and_survive_json():
    rows = [normalize_row(r) for r in fake_rows()]
    for row in rows:
        assert set(ROW_KEYS) <= set(row)
    fast, slow, skipped, failed = json.loads(json.dumps(rows))
    assert fast["ratio"] == pytest.approx(20.0) and fast["higher_is_better"] is True and fast["goal_met"] is True
    assert slow["ratio"] == pytest.approx(40.0) and slow["higher_is_better"] is False and slow["goal_met"] is False
    assert skipped["status"] == "skipped" and skipped["goal_met"] is None and skipped["value"] is None
    assert failed["status"] == "failed" and failed["goal_met"] is False and "boom" in failed["error"]
    assert fast["machine"] == "test box" and skipped["machine"]  # filled with this machine's summary


def test_measure_and_summarize():
    m = summarize([3.0, 1.0, 2.0, 10.0])
    assert m["median"] == 2.5 and m["runs"] == [3.0, 1.0, 2.0, 10.0]
    assert m["spread"]["min"] == 1.0 and m["spread"]["max"] == 10.0 and m["spread"]["iqr"] > 0
    calls = []
    values = iter([99.0, 1.0, 2.0, 3.0])  # the first is the warmup, dropped
    m = measure(lambda: calls.append(1) or next(values), repeats=3, warmup=1)
    assert len(calls) == 4 and m["median"] == 2.0 and m["runs"] == [1.0, 2.0, 3.0]
    m = measure(lambda x: None, repeats=2, warmup=0, setup=lambda: 5)  # wall time when fn returns nothing
    assert len(m["runs"]) == 2 and all(r >= 0 for r in m["runs"])


def test_print_table_shows_every_row():
    from rich.console import Console

    console = Console(file=io.StringIO(), width=250, color_system=None)
    print_table(fake_rows(), console=console)
    text = console.file.getvalue()
    for needle in ("tokens_per_s", "2,000 tokens/s (1,900–2,100)", "reference loader: 100 tokens/s", "20.0x (higher is better)",
                   ">= 20x", "yes", "NO", "skipped", "FAILED", "test box", "slow | on purpose"):
        assert needle in text, needle


MODULES = {
    "bench_ok.py": """
        from bench.common import make_row, module_main
        def run(quick):
            return [make_row("ok_figure", 2.0 if quick else 1.0, "s", baseline="nothing", baseline_value=4.0,
                             goal="< 3 s", goal_met=True, runs=[2.0])]
        if __name__ == "__main__":
            raise SystemExit(module_main(run, name="bench_ok"))
    """,
    "bench_crash.py": """
        raise RuntimeError("this benchmark crashes on import")
    """,
    "bench_skip.py": """
        from bench.common import Skip, module_main
        def run(quick):
            raise Skip("needs a GPU")
        if __name__ == "__main__":
            raise SystemExit(module_main(run, name="bench_skip"))
    """,
    "bench_hang.py": """
        import time
        time.sleep(60)
    """,
}


def run_harness(*args, cwd=REPO):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_crashing_module_is_a_failed_row_and_the_others_still_run(tmp_path: Path):
    mods = tmp_path / "mods"
    mods.mkdir()
    for name, body in MODULES.items():
        (mods / name).write_text(textwrap.dedent(body))
    out = tmp_path / "out.json"
    proc = run_harness("--quick", "--modules-dir", str(mods), "--timeout", "4", "--json", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a module failed: non-zero, but everything ran
    result = json.loads(out.read_text())
    assert {"timestamp", "git", "machine", "modules", "rows"} <= set(result)
    assert result["quick"] is True and result["machine"]["cores"] and result["git"]["commit"]
    status = {name: m["status"] for name, m in result["modules"].items()}
    assert status == {"bench_data": "skipped", "bench_train": "skipped", "bench_submit": "skipped",
                      "bench_preempt": "skipped", "bench_crash": "failed", "bench_hang": "failed",
                      "bench_ok": "ok", "bench_skip": "skipped"}
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["ok_figure"]["value"] == 2.0 and rows["ok_figure"]["ratio"] == 0.5  # its quick mode ran
    assert rows["ok_figure"]["module"] == "bench_ok"
    assert "crashes on import" in rows["bench_crash"]["error"] and rows["bench_crash"]["goal_met"] is False
    assert "timed out" in rows["bench_hang"]["error"]
    assert "needs a GPU" in rows["bench_skip"]["note"]
    assert "not written yet" in rows["bench_data"]["note"]
    assert "FAILED" in proc.stdout and "ok_figure" in proc.stdout  # one table with all of them


def test_only_selects_modules(tmp_path: Path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "bench_ok.py").write_text(textwrap.dedent(MODULES["bench_ok.py"]))
    out = tmp_path / "out.json"
    proc = run_harness("--modules-dir", str(mods), "--only", "ok", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert list(result["modules"]) == ["bench_ok"] and result["rows"][0]["value"] == 1.0  # not quick


README = (
    "# Title\r\n\r\nSome text | with pipes\r\n"
    "<!-- bench:begin -->\r\n| old | table |\r\n|---|---|\r\n<!-- bench:end -->\r\n"
    "\r\nTrailing text, no final newline"
)


def write_result(path: Path) -> Path:
    result = {"timestamp": "2026-01-01T00:00:00+00:00", "quick": True, "git": {"commit": "abc123", "dirty": False},
              "machine_summary": "test box", "rows": fake_rows()}
    path.write_text(json.dumps(result))
    return path


def test_report_rewrites_exactly_the_marked_section(tmp_path: Path):
    results = write_result(tmp_path / "latest.json")
    readme = tmp_path / "README.md"
    readme.write_bytes(README.encode())
    before = README.encode()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bench.report", str(results), "--update-readme", str(readme)],
                          cwd=str(REPO), env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    after = readme.read_bytes()
    head = before[:before.index(b"<!-- bench:begin -->") + len(b"<!-- bench:begin -->")]
    tail = before[before.index(b"<!-- bench:end -->"):]
    assert after.startswith(head) and after.endswith(tail)
    section = after[len(head):len(after) - len(tail)].decode()
    assert "| old | table |" not in section
    assert "tokens_per_s" in section and "20.0x (higher is better)" in section and "slow | on purpose" in section
    assert "\n" not in section.replace("\r\n", "")  # the file's CRLF line endings are kept
    assert "abc123" in section and "test box" in section
    # running it again changes nothing
    report.update_readme(readme, report.markdown_table(json.loads(results.read_text())))
    assert readme.read_bytes() == after


def test_report_without_markers_changes_nothing(tmp_path: Path):
    results = write_result(tmp_path / "latest.json")
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    assert report.main([str(results), "--update-readme", str(readme)]) == 2
    assert readme.read_text() == "# no markers here\n"
    with pytest.raises(report.MarkerError):
        report.replace_section("<!-- bench:end -->\n<!-- bench:begin -->\n", "x\n")


def test_report_prints_markdown(tmp_path: Path, capsys):
    assert report.main([str(write_result(tmp_path / "latest.json"))]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| figure | value") and len(lines) == 2 + len(fake_rows())
    assert "skipped: needs Slurm" in out and "FAILED" in out


def test_gpu_path_spec_is_valid_and_its_log_parser_reads_the_trainers_lines(tmp_path, caplog):
    """The GPU benchmark cannot run here; what it feeds the trainer and reads back from it can be checked."""
    import logging

    from bench.bench_gpu import LOG_LINE, _spec
    from ernie_cluster.spec import validate_text
    from ernie_cluster.train.metrics import Metrics

    data = tmp_path / "data"
    r = subprocess.run([sys.executable, "-m", "data_tools.toy_corpus", "--out-dir", str(data), "--docs", "20"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    for seq, micro in ((128, 128), (512, 32)):
        spec = validate_text(_spec(tmp_path / f"run{seq}", data, seq, micro, 150), f"gpu-seq{seq}", [])
        t = spec.train
        assert (t.device, t.engine, t.use_amp, t.max_seq_len, t.micro_batch_size) == ("gpu", "static", True, seq, micro)
        m = spec.model  # the base shape: the built-in config with no shape override
        assert (m.model_name_or_path, m.hidden_size, m.num_hidden_layers, m.vocab_size) == ("ernie-1.0-base-zh", None, None, 18000)
        assert spec.global_batch_size == micro and spec.accumulate_steps == 1
    metrics = Metrics(rank=0, visualdl_dir=None, global_batch_size=128, seq_len=128, max_steps=150, logging_freq=25,
                      use_amp=True)
    with caplog.at_level(logging.INFO, logger="ernie_cluster.train"):
        for step in range(1, 51):
            metrics.step(step, 7.5, 7.0, 0.5, 1e-4, 32768.0)
    found = LOG_LINE.findall(caplog.text)
    assert [int(s) for s, _, _ in found] == [25, 50]
    assert all(float(sps) > 0 and abs(int(tps) - float(sps) * 128) <= 64 for _, sps, tps in found)


def _hang_trial(variant, resumed, **kw):
    t = {"variant": variant, "job": "7", "step_at_hang": 25, "last_step": 26, "resumed_step": 20, "steps_lost": 6,
         "resumed": resumed, "job_state": "requeued" if resumed else "TIMEOUT", "startup_s": 15.0,
         "hang_after_submit_s": 20.0, "left_in_allocation_s": 100.0, "attempt_reason": "failed",
         "attempt_cause": "hung", "action": "requeue", "watchdog_limit_s": 10.0, "hang_logged_s": 10.0,
         "warning_s": None, "ended_s": 47.0, "to_restart_s": 68.0, "to_resumed_log_s": 79.0, "resume_s": 79.3,
         "first_step_after": 21}
    t.update(kw)
    return t


def test_hang_bench_spec_rows_and_freezer():
    """The hang benchmark needs Slurm; what it submits, its rows and the way it freezes a trainer can be checked."""
    import signal
    import time

    from bench import bench_hang
    from ernie_cluster.spec import load_spec

    for quick in (True, False):
        for variant, overrides in bench_hang._variants(quick).items():
            spec = load_spec(bench_hang.TINY, ["output_dir=/tmp/x", *overrides], check_paths=False)
            assert spec.cluster.watchdog.enabled is (variant == "ours")
            assert spec.cluster.watchdog.step_s_min == bench_hang.WATCHDOG["step_s_min"]
            assert spec.cluster.requeue.signal_lead_s == bench_hang.SIGNAL_LEAD_S
    assert "cluster.time=00:02:00" in bench_hang._variants(True)["baseline"]

    # the baseline resumed: its own figure; not resumed (TIMEOUT, no requeue): the end of its job, said so
    ours = _hang_trial("ours", True)
    for resumed, expect in ((True, 120.0), (False, 113.0)):
        base = _hang_trial("baseline", resumed, attempt_reason=None if not resumed else "failed",
                           attempt_cause=None if not resumed else "trainer-died", warning_s=23.0, ended_s=113.0,
                           resume_s=120.0 if resumed else None)
        rows = [normalize_row(r) for r in bench_hang._rows([{"ours": ours, "baseline": base}], "LIMITS", "MACHINE")]
        assert [r["name"] for r in rows] == ["hang: seconds from hang to training resumed",
                                             "hang: seconds from hang to attempt ended", "hang: training steps lost"]
        resume, ended, lost = rows
        assert resume["value"] == 79.3 and resume["baseline_value"] == expect
        assert resume["ratio"] == pytest.approx(79.3 / expect) and resume["goal_met"] is True
        assert ended["value"] == 47.0 and ended["baseline_value"] == 113.0
        assert lost["value"] == lost["baseline_value"] == 6
        assert "LIMITS" in resume["note"] and "MACHINE" in resume["note"]
        assert "Slurm's time-limit warning" in resume["note"]
        assert ("not requeued" in resume["baseline"]) is (not resumed)
        assert resume["baseline_not_resumed"] == (0 if resumed else 1)
        json.dumps(rows)

    # frozen: neither SIGCONT nor a handled signal revives it; SIGKILL ends it and its exit is collected
    proc = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                             "signal.signal(signal.SIGUSR2, lambda *a: print('usr2', flush=True))\n"
                             "print('up', flush=True)\n"
                             "while True: print('tick', flush=True); time.sleep(0.05)"],
                            stdout=subprocess.PIPE)
    fd = proc.stdout.fileno()

    def printed() -> bytes:
        try:
            return os.read(fd, 1 << 16)
        except BlockingIOError:
            return b""

    try:
        first = b""
        while b"\n" not in first:
            first += os.read(fd, 1)
        assert first == b"up\n"
        freezer = bench_hang.Freezer()
        freezer.freeze(proc.pid)
        os.set_blocking(fd, False)
        time.sleep(0.2)
        printed()  # what it printed before it was frozen
        for sig in (signal.SIGCONT, signal.SIGUSR2, signal.SIGTERM):
            os.kill(proc.pid, sig)
        time.sleep(0.5)
        assert printed() == b"" and proc.poll() is None
        freezer.kill_all()
        assert not freezer.tids  # every thread's exit collected (the tracer reaps its own child: no status left)
        proc.wait(timeout=10)
        with pytest.raises(ProcessLookupError):
            os.kill(proc.pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
