"""The elastic benchmark (bench/bench_elastic.py) needs the local Slurm; what it submits and the rows it makes
from its measurements are checked here without it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_elastic  # noqa: E402
from bench.common import normalize_row  # noqa: E402
from ernie_cluster.spec import load_spec  # noqa: E402


def test_the_two_variants_differ_only_in_the_node_count():
    specs = {v: load_spec(bench_elastic.TINY, bench_elastic._overrides(nodes, Path("/tmp/be"), "be"),
                          check_paths=False) for v, nodes in bench_elastic.VARIANTS}
    el, fx = specs["elastic"], specs["fixed"]
    assert (el.resources.nodes, fx.resources.nodes) == ("2-3", 3)
    assert el.model_copy(update={"resources": fx.resources}).sha256() == fx.sha256()
    assert el.cluster.exclusive and el.cluster.partition == "low" and not el.convert.enabled
    # the same global batch on 2 and on 3 nodes
    plans = [el.batch_plan(world_size=n) for n in (2, 3)]
    assert [(p.dp_degree, p.accumulate_steps) for p in plans] == [(2, 3), (3, 2)]
    assert fx.global_batch_size == el.global_batch_size == bench_elastic.GBS


def _trial(variant: str, **kw):
    t = {"variant": variant, "job": "7" if variant == "elastic" else "8", "hold_s": 60, "stop_step": 20,
         "first_step_after": 21, "nodes_before": 3, "nodes_after": 2 if variant == "elastic" else 3,
         "resume_s": 29.0 if variant == "elastic" else 80.0, "to_attempt_end_s": 2.5, "hold_start_s": 3.0,
         "hold_end_s": 63.0, "to_restart_s": 15.0 if variant == "elastic" else 64.0,
         "steps_while_held": 300 if variant == "elastic" else 0, "sec_per_step_before": 0.08,
         "sec_per_step_after": 0.11 if variant == "elastic" else None}
    t.update(kw)
    return t


@pytest.mark.parametrize("resume_s,met", [(29.0, True), (70.0, False)])
def test_rows_compare_with_the_fixed_count_and_say_the_hold(resume_s, met):
    trials = {"elastic": [_trial("elastic", resume_s=resume_s)], "fixed": [_trial("fixed")]}
    rows = [normalize_row(r) for r in bench_elastic._rows(trials, 60, "MACHINE")]
    resumed, held = rows
    assert resumed["name"] == "elastic: seconds from preemption to training resumed, 1 of 3 nodes held"
    assert (resumed["value"], resumed["baseline_value"]) == (resume_s, 80.0)
    assert resumed["ratio"] == pytest.approx(resume_s / 80.0)
    assert resumed["goal_met"] is met  # resumed before the held node was free again, or not
    assert "held 60 s" in resumed["baseline"] and resumed["hold_s"] == 60
    assert "on 2 nodes (was 3)" in resumed["note"] and "on 3 nodes (was 3)" in resumed["note"]
    assert "MACHINE" in resumed["note"]
    assert (held["value"], held["baseline_value"], held["goal_met"]) == (300, 0, True)
    assert "110.0 ms on 2" in held["note"]
    json.dumps(rows)
