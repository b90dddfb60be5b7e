"""The console's pure parts: ETA and durations, steps lost to resumes, log parsing, event and summary lines, the
plain view (no ANSI), what a run waits on. No paddle, no Slurm."""

from __future__ import annotations

import io

import pytest

from ernie_cluster import progress as pg
from ernie_cluster.console import PlainView, event_line, progress_line
from ernie_cluster.watch import Event, end_events, summary_lines

TRAIN = ("2026-11-30 00:30:17 [rank 0] INFO step 10/200 | loss 6.952019 | lm_loss 6.257714 | sop_loss 0.694305 | "
         "lr 1.000e-03 | 8.884 steps/s | 142.2 samples/s | 18195 tokens/s | ETA 0:00:21")


@pytest.mark.parametrize("step, max_steps, rate, eta", [
    (100, 200, 10.0, 10.0), (200, 200, 5.0, 0.0), (250, 200, 5.0, 0.0),
    (None, 200, 1.0, None), (10, None, 1.0, None), (10, 200, None, None), (10, 200, 0.0, None),
    (10, 200, float("nan"), None),
])
def test_eta_seconds(step, max_steps, rate, eta):
    assert pg.eta_seconds(step, max_steps, rate) == eta


@pytest.mark.parametrize("seconds, text", [
    (None, "-"), (float("nan"), "-"), (float("inf"), "-"), (0, "0:00:00"), (21.4, "0:00:21"), (59.6, "0:01:00"),
    (3725, "1:02:05"), (86400 + 3 * 3600 + 4 * 60 + 5, "1d 3:04:05"), (-5, "0:00:00"),
])
def test_fmt_duration(seconds, text):
    assert pg.fmt_duration(seconds) == text


@pytest.mark.parametrize("spans, lost", [
    ([(0, 93), (93, 200)], 0),                      # stopped with a checkpoint at the stop step: nothing redone
    ([(0, 130), (100, 200)], 30),                   # crashed at 130, resumed from the checkpoint at 100
    ([(0, 100), (50, 70), (50, 200)], 20 + 50),     # two resumes from the same checkpoint: both redo work
    ([(0, 50), (None, None), (40, 200)], 10),       # an attempt that never trained (data preparation failed)
    ([(0, 80), (0, 200)], 80),                      # no checkpoint: started over
    ([(0, 120), (100, None)], 0),                   # resumed, nothing finished yet
    ([], 0),
])
def test_steps_lost(spans, lost):
    assert pg.steps_lost(spans) == lost


def test_worker_lines_parse_the_trainers_format():
    s = pg.AttemptSeries("attempt-7-1", "7", 1)
    events = pg.parse_worker_lines([
        "2026-11-30 00:30:32 [rank 0] INFO resumed from /r/checkpoints/step_000000093: step 93, consumed samples 1488",
        "2026-11-30 00:30:32 [rank 0] INFO resumed on 2 nodes, was 3: accumulation 2 -> 3, dp 3 -> 2 "
        "(global batch 48 kept)",
        "2026-11-30 00:30:32 [rank 0] INFO start-up took 3.1s; training steps 93 -> 200",
        TRAIN,
        "2026-11-30 00:30:33 [rank 0] INFO valid at step 100 | loss 5.954734 | lm_loss 5.263169 | sop_loss 0.691",
        "2026-11-30 00:30:33 [rank 0] INFO checkpoint step 100 saved to /r/checkpoints/step_000000100 in 0.01s",
        "2026-11-30 00:30:34 [rank 0] WARNING VisualDL disabled: no module",
        "[2026-11-30 00:30:15,722] [ WARNING] fleet.py:1342 - It is recommended to use DistributedStrategy",
    ], s)
    assert (s.resumed_from, s.start_step, s.first_step, s.max_steps, s.steps_per_s) == (93, 93, 93, 200, 8.884)
    assert s.train == [(10, 6.952019, 1e-3)] and s.samples_per_s == [142.2] and s.valid == [(100, 5.954734)]
    assert [(e.kind, e.text) for e in events] == [
        ("resume", "from step 93 (/r/checkpoints/step_000000093)"),
        ("nodes", "resumed on 2 nodes, was 3: accumulation 2 -> 3, dp 3 -> 2 (global batch 48 kept)"),
        ("checkpoint", "step 100 saved (/r/checkpoints/step_000000100)"),
        ("warning", "VisualDL disabled: no module")]  # paddle's own warnings are not the run's
    assert events[0].time == pg.line_time("2026-11-30 00:30:32")


def test_launcher_lines_give_nodes_data_and_signals():
    s = pg.AttemptSeries("attempt-7-0", "7", 0)
    p = "[ernie_cluster.launch node {}/2]"
    events = pg.parse_launcher_lines([
        f"2026-11-30T00:30:10 {p.format(0)} job_id=7 restart=0 node_rank=0 num_nodes=2 node=n1 master=n1:1",
        f"2026-11-30T00:30:11 {p.format(0)} tokenizing corpus.txt: python -m data_tools.x",
        f"2026-11-30T00:30:12 {p.format(1)} WARNING: n2 resolves to 127.0.1.1 (loopback) here",
        f"2026-11-30T00:30:20 {p.format(0)} received SIGUSR2: asking the trainers to save",
    ], s)
    assert (s.nodes, s.data, s.started) == (2, "preparing", pg.line_time("2026-11-30T00:30:10"))
    assert [(e.kind, e.text) for e in events] == [
        ("data", "tokenizing corpus.txt: python -m data_tools.x"),
        ("warning", "node 1: n2 resolves to 127.0.1.1 (loopback) here"),
        ("signal", "SIGUSR2: asking the trainers to save")]
    pg.parse_launcher_lines([f"2026-11-30T00:30:13 {p.format(0)} data ready (2.0s)"], s)
    assert s.data == "ready"


def test_log_tail_reads_each_line_once(tmp_path):
    path = tmp_path / "workerlog.0"
    tail = pg.LogTail(path)
    assert tail.read() == []  # not there yet
    path.write_bytes(b"one\ntw")
    assert tail.read() == ["one"]  # the partial line waits for its end
    with open(path, "ab") as f:
        f.write(b"o\r\nthree\n")
    assert tail.read() == ["two", "three"] and tail.read() == []
    path.write_bytes(b"new\n")  # truncated (or replaced): read again from the start
    assert tail.read() == ["new"]


def test_figures_of_a_live_attempt_and_its_eta():
    done = pg.AttemptSeries("attempt-7-0", "7", 0, record={"reason": "stopped", "step": 93, "nodes": 2})
    done.start_step, done.train = 0, [(90, 5.9, 1e-3)]
    live = pg.AttemptSeries("attempt-7-1", "7", 1, nodes=2)
    live.start_step, live.resumed_from = 93, 93
    figs = pg.figures([done, live], 200, {"phase": "train", "step": 95})
    assert (figs["step"], figs["loss"], figs["loss_step"], figs["phase"], figs["eta_s"]) == (95, 5.9, 90, "train", None)
    pg.parse_worker_lines([TRAIN.replace("step 10/200", "step 100/200")], live)
    figs = pg.figures([done, live], 200, {"phase": "train", "step": 101})
    assert figs["step"] == 101 and figs["eta_s"] == pytest.approx(99 / 8.884) and figs["nodes"] == 2
    assert progress_line({**figs, "index": 1, "checkpoint": {"step": 93}}) == (
        "step 101/200 | loss 6.9520 at step 100 | 142.2 samples/s | ETA 0:00:11 | attempt 1 on 2 nodes | checkpoint 93")


def test_end_events_tell_preemption_requeue_and_failure():
    stop = {"reason": "stopped", "cause": "preempted", "step": 93, "action": "requeue", "signal": "SIGUSR2",
            "message": "1 trainer(s) saved and stopped; preempted: restart 1 of at most 20",
            "excluded": {"n3": "hung twice"}}
    assert [(e.kind, e.text) for e in end_events(0, stop, 1.0)] == [
        ("preempted", "attempt 0 preempted by Slurm at step 93; the trainers saved a checkpoint there"),
        ("node", "node n3 left out of the requeued job: hung twice"),
        ("requeue", "attempt 0 requeued (preempted: restart 1 of at most 20)")]
    crash = {"reason": "failed", "cause": "nonfinite", "step": 40, "action": "none", "message": "loss is nan"}
    assert [(e.kind, e.text) for e in end_events(2, crash, 1.0)] == [
        ("failed", "attempt 2 failed at step 40 (nonfinite): loss is nan")]
    denied = {**stop, "cause": "timeout", "action": "requeue-denied", "message": "cap reached"}
    assert [e.kind for e in end_events(1, denied, 1.0)] == ["timeout", "node", "failed"]


def test_summary_and_plain_lines_hold_no_terminal_codes():
    summary = {"state": "COMPLETED", "attempts": 2, "steps_lost": 30, "final_loss": (200, 5.86368),
               "max_steps": 200, "model_dir": "/r/converted", "verified": True, "elapsed_s": 125.2,
               "causes": {"preempted": {"attempts": 1, "requeued": 1}, "completed": {"attempts": 1, "requeued": 0}}}
    assert summary_lines(summary) == [
        "run COMPLETED after 0:02:05",
        "  attempts:        2 (1 preempted, requeued; 1 completed)",
        "  steps lost:      30 (computed again after resumes)",
        "  final loss:      5.863680 at step 200/200",
        "  converted model: /r/converted (verified)"]
    none = summary_lines({**summary, "final_loss": None, "model_dir": None, "causes": {}, "elapsed_s": None})
    assert none[0] == "run COMPLETED after -" and none[-2:] == ["  final loss:      none logged",
                                                                "  converted model: none"]
    out = io.StringIO()
    view = PlainView(out, every_s=0.0)
    figs = {"step": 10, "loss_step": 10, "max_steps": 200, "loss": 6.9, "samples_per_s": 142.2, "eta_s": 21.0}
    view.show([Event(0.0, "start", "attempt 0: job 7, restart 0, 1 node")], figs)  # the first poll: no progress line
    view.show([], {**figs, "step": 20, "loss_step": 20})
    view.show([], {**figs, "step": 20, "loss_step": 20})  # nothing new logged: no line
    view.close(summary_lines(summary))
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    assert lines[0] == event_line(Event(0.0, "start", "attempt 0: job 7, restart 0, 1 node"))
    assert [line.split(" ", 2)[1] for line in lines[1:2]] == ["progress"] and len(lines) == 2 + 5


def test_waiting_on_names_reasons_starts_and_the_dependency():
    jobs = [{"kind": "train", "job_id": "41", "state": "PENDING", "reason": "BeginTime", "expected_start": 1.8e9},
            {"kind": "convert", "job_id": "42", "state": "PENDING", "reason": "Dependency", "expected_start": None}]
    lines = pg.waiting_on(jobs, {})
    assert lines == [f"training job 41 is pending (BeginTime: its begin time has not come); Slurm expects it to start "
                     f"at {pg.fmt_time(1.8e9)}",
                     "conversion job 42 waits for training job 41 to complete (afterok)"]
    jobs[0].update(state="RUNNING", reason="")
    assert pg.waiting_on(jobs[:1], {"phase": "data preparation", "attempt": "attempt-41-0"}) == [
        "data preparation on node 0 (attempt-41-0): tokenizing or building the sample index"]
    assert pg.waiting_on([{"kind": "train", "job_id": "9", "state": "PENDING", "reason": "Odd"}], {}) == [
        "training job 9 is pending (Odd); Slurm gives no expected start yet"]


def test_expected_starts_asks_squeue_start(tmp_path, monkeypatch):
    from ernie_cluster import slurm

    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "argv"
    (bindir / "squeue").write_text(f'#!/bin/sh\necho "$*" > "{log}"\nprintf "5|2026-11-30T01:35:06\\n6|N/A\\n"\n')
    (bindir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    assert slurm.expected_starts(["5", "6", ""]) == {"5": slurm.parse_timestamp("2026-11-30T01:35:06"), "6": None}
    assert log.read_text().split() == ["-h", "--start", "-j", "5,6", "-o", "%i|%S"]
    assert slurm.expected_starts([]) == {}
    (bindir / "squeue").unlink()
    assert isinstance(slurm.expected_starts(["5"]), slurm.NoAnswer)  # not "no estimate": Slurm said nothing


def test_a_run_with_nothing_to_follow_ends_the_follow_and_says_why(tmp_path):
    from ernie_cluster.rundir import RunDir
    from ernie_cluster.watch import RunWatcher

    run = RunDir(tmp_path)
    run.write_state({"backend": "slurm", "name": "x"})  # no job recorded yet
    watcher = RunWatcher(run)
    events = watcher.poll()
    assert [e.kind for e in events] == ["warning"] and "spec.yaml" in events[0].text  # nothing silent
    assert watcher.poll() == []  # said once
    assert watcher.finished() == "UNKNOWN (state.json records no job)"
    run.write_state({})
    watcher.poll()
    assert watcher.finished() == "UNKNOWN (state.json names no backend)"
    run.write_state({"backend": "local", "supervisor_pid": 2 ** 22 + 7, "local_state": "RUNNING"})
    watcher.poll()
    assert watcher.finished() == f"STOPPED (the local supervisor, pid {2 ** 22 + 7}, is gone)"


def test_the_local_supervisors_problems_are_events(tmp_path):
    import os

    from ernie_cluster.local import output_file
    from ernie_cluster.rundir import RunDir
    from ernie_cluster.watch import RunWatcher

    run = RunDir(tmp_path)
    run.write_state({"backend": "local", "supervisor_pid": os.getpid(), "local_state": "RUNNING"})
    out = output_file(run, f"local{os.getpid()}")
    out.parent.mkdir(parents=True)
    out.write_text("[ernie_cluster local] attempt 0: python -m ernie_cluster.launch\n"
                   "LAUNCH INFO 2026-11-30 00:30:13,448 ERROR: not ours\n"
                   "[ernie_cluster local] ERROR: attempt 0: the launcher recorded no attempt (exit 1); its output ...\n")
    watcher = RunWatcher(run)
    events = [(e.kind, e.text) for e in watcher.poll() if "spec.yaml" not in e.text]
    assert events == [("error", "attempt 0: the launcher recorded no attempt (exit 1); its output ...")]
