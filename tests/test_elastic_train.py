"""Elastic resume in the trainer: a run with `resources.nodes: 2-3` trained on 3 nodes, then 2, then 3 again
(real `paddle.distributed.launch` processes over gloo, one CPU trainer per "node") against the same run
uninterrupted on 3 nodes.

The global batch (12 = micro 2 x dp 3 x accumulation 2 = micro 2 x dp 2 x accumulation 3) and the order of
samples do not depend on the node count, so:

* every step trains on exactly the same global sample ids and the same micro-batches (their content digests,
  in global order), whatever the node count;
* the losses agree within TOLERANCE, not bit for bit: at 2 nodes a rank sums 3 micro-batches' gradients
  before a 2-way all-reduce, at 3 nodes 2 before a 3-way one, and float addition is not associative (dropout
  is off in these tiny models; with dropout each rank also draws its own masks, see README).
"""

from __future__ import annotations

import json
import shutil
from typing import Dict, List

import pytest

from helpers_elastic import TOLERANCE, global_stream, mean_loss, relative_differences, steps_by_rank
from test_train_dist import LaunchedNodes
from test_train_support import by_step, make_run, run_trainer, tiny_spec, toy_data  # noqa: F401

STEPS = 12
GBS = 12


def _spec(tmp, data) -> Dict:
    spec = tiny_spec(tmp, data, engine="dynamic", nodes=3, max_steps=STEPS)
    spec["cluster"] = {"backend": "slurm", "time": "01:00:00", "requeue": {"signal_lead_s": 30}}
    spec["resources"] = {"nodes": "2-3", "procs_per_node": 1}
    spec["train"].update(micro_batch_size=2, global_batch_size=GBS, checkpoint_steps=4, eval_freq=1000)
    return spec


def _steps(job: LaunchedNodes) -> Dict[int, List[Dict]]:
    """step -> the records of every rank, in rank order."""
    return steps_by_rank(job.loss_log, job.nodes)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, toy_data):
    tmp = tmp_path_factory.mktemp("elastic")
    ref = LaunchedNodes(make_run(tmp / "ref", dict(_spec(tmp / "ref", toy_data))), "ref", nodes=3)
    assert ref.wait() == [0, 0, 0], ref.output()
    run = make_run(tmp / "el", _spec(tmp / "el", toy_data))
    parts = []
    for tag, nodes, stop in (("a", 3, "4"), ("b", 2, "8"), ("c", 3, None)):
        env = {"ERNIE_CLUSTER_TEST_STOP_AT_STEP": stop} if stop else {}
        job = LaunchedNodes(run, tag, nodes=nodes, **env)
        assert job.wait() == [0] * nodes, job.output()
        parts.append(job)
    return ref, parts, run


def _elastic_steps(parts: List[LaunchedNodes]) -> Dict[int, List[Dict]]:
    """step -> every rank's record, over the attempts of the elastic run (each step ran in one attempt)."""
    got: Dict[int, List[Dict]] = {}
    for job in parts:
        got.update(_steps(job))
    return got


def test_elastic_run_trains_on_the_same_samples_as_the_uninterrupted_run(runs):
    ref, parts, _ = runs
    want, got = _steps(ref), _elastic_steps(parts)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        ids, micro = global_stream(got[step])
        ref_ids, ref_micro = global_stream(want[step])
        assert ids == ref_ids == list(range((step - 1) * GBS, step * GBS)), step
        assert micro == ref_micro, step
    assert [len(got[s]) for s in (4, 5, 8, 9)] == [3, 2, 2, 3]  # the steps ran on 3, 2, 2 and 3 ranks


def test_elastic_losses_agree_within_the_stated_tolerance(runs):
    ref, parts, _ = runs
    want, got = _steps(ref), _elastic_steps(parts)
    rel = relative_differences(got, want)
    assert sorted(rel) == list(range(1, STEPS + 1))
    assert max(rel.values()) <= TOLERANCE, rel
    assert all(got[s][0]["lr"] == want[s][0]["lr"] for s in range(1, STEPS + 1))  # the same schedule
    # the first attempt ran as the reference does, so its steps are the reference's bit for bit
    assert [[r["loss"] for r in got[s]] for s in range(1, 5)] == [[r["loss"] for r in want[s]] for s in range(1, 5)]


def test_elastic_resume_logs_the_change_and_records_the_shape(runs):
    _, (a, b, c), run = runs
    assert "resumed on 2 nodes, was 3: accumulation 2 -> 3, dp 3 -> 2 (global batch 12 kept)" in b.output()
    assert "resumed on 3 nodes, was 2: accumulation 3 -> 2, dp 2 -> 3 (global batch 12 kept)" in c.output()
    assert "resumed on" not in a.output()
    shapes = {}
    for step in (4, 8, STEPS):
        state = json.loads((run / "checkpoints" / f"step_{step:09d}" / "trainer_state.json").read_text())
        shapes[step] = (state["nodes"], state["world_size"], state["dp_degree"], state["accumulate_steps"],
                        state["consumed_samples"])
    assert shapes == {4: (3, 3, 3, 2, 48), 8: (2, 2, 2, 3, 96), STEPS: (3, 3, 3, 2, 144)}
    from visualdl import LogReader

    seen = []  # one VisualDL record file per attempt: its node count at the step it started
    for record in (run / "visualdl").glob("vdlrecords.*"):
        reader = LogReader(file_path=str(record))
        seen += [(x.id, x.value) for x in reader.get_data("scalar", "attempt/nodes")]
    assert sorted(seen) == [(0, 3), (4, 2), (8, 3)]


def test_a_world_outside_the_range_is_refused(runs, tmp_path, toy_data):
    spec = _spec(tmp_path, toy_data)
    spec["resources"]["nodes"] = "3-4"
    spec["train"]["global_batch_size"] = 24  # micro 2 x dp 3 x 4, micro 2 x dp 4 x 3
    job = LaunchedNodes(make_run(tmp_path, spec), "outside", nodes=2)
    assert job.wait() != [0, 0]
    assert "the launcher started 2 trainers, but the spec runs 1 per node on 3-4 node(s)" in job.output()


def test_static_engine_resumes_a_checkpoint_of_another_degree(runs, tmp_path, toy_data):
    """As far as a CPU allows the static engine (one process): the 3-node dynamic checkpoint of step 4 resumed
    on 1 node, where the static program is built with gradient merge over 6 micro-batches."""
    ref, (a, _, _), el_run = runs
    spec = _spec(tmp_path, toy_data)
    spec["cluster"]["backend"] = "local"
    spec["resources"] = {"nodes": 1, "procs_per_node": 1}
    spec["train"]["engine"] = "static"
    run = make_run(tmp_path, spec)
    shutil.copytree(el_run / "checkpoints" / "step_000000004", run / "checkpoints" / "step_000000004")
    static = run_trainer(run, "static", ERNIE_CLUSTER_TEST_STOP_AT_STEP="8")
    assert static.proc.returncode == 0, static.output[-3000:]
    assert "resuming a dynamic-engine checkpoint in the static engine" in static.output
    assert "resumed on 1 node, was 3: accumulation 2 -> 6, dp 3 -> 1 (global batch 12 kept)" in static.output
    got, want = by_step(static.losses()), _steps(ref)
    assert sorted(got) == [5, 6, 7, 8]
    for step in got:
        assert got[step]["samples"] == list(range((step - 1) * GBS, step * GBS))
        assert got[step]["micro"] == global_stream(want[step])[1]
        assert abs(got[step]["loss"] - mean_loss(want[step])) <= TOLERANCE * mean_loss(want[step]), step
