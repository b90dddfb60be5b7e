"""`resources.nodes` as a count or a range (elastic), and the global batch at every count of a range
(ernie_cluster/spec/batch.py): what is accepted, what is refused (exit 2, field, YAML line and fix), and what
`validate` prints."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ernie_cluster.cli import main
from ernie_cluster.spec import BatchPlanError, load_spec, validate_text

from helpers_spec import base_spec, write_spec


def _validate(tmp_path: Path, **sections):
    return validate_text(yaml.safe_dump(base_spec(tmp_path, **sections), sort_keys=False), "x.yaml", [])


def _refused(tmp_path: Path, capsys, spec: dict, field: str) -> str:
    """`validate` of `spec`: exit 2, and the one line of `field`, which must carry the line of that key."""
    text = yaml.safe_dump(spec, sort_keys=False)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if f": {field}: " in line]
    assert len(lines) == 1, err
    key = field.rsplit(".", 1)[-1]
    section = field.split(".")[0]
    # the key's own line, inside its section (both sections of base_spec hold no other key of that name)
    start = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(f"{section}:"))
    want = next(i for i, line in enumerate(text.splitlines(), 1) if i > start and line.strip().startswith(f"{key}:"))
    assert lines[0].strip().startswith(f"{path}:{want}: {field}: "), (lines[0], want)
    return lines[0]


@pytest.mark.parametrize("value,nodes,counts", [
    (3, 3, [3]), ("3", 3, [3]), ("2-4", "2-4", [2, 3, 4]), ("3-3", 3, [3]), ("1-2", "1-2", [1, 2]),
])
def test_a_count_or_a_range_is_accepted(tmp_path, value, nodes, counts):
    gbs = 4 * 12  # micro 4: dp 1, 2, 3, 4 all keep it
    s = _validate(tmp_path, resources={"nodes": value}, train={"global_batch_size": gbs})
    r = s.resources
    assert r.nodes == nodes and list(r.node_counts) == counts
    assert (r.min_nodes, r.max_nodes, r.elastic) == (counts[0], counts[-1], len(counts) > 1)
    assert r.world_size == counts[-1]  # the spec's own figures are at the most nodes
    plans = [s.batch_plan(world_size=n) for n in counts]
    assert [(p.nodes, p.dp_degree, p.accumulate_steps) for p in plans] == [(n, n, gbs // (4 * n)) for n in counts]
    assert all(p.micro_batch_size * p.dp_degree * p.accumulate_steps == gbs for p in plans)


@pytest.mark.parametrize("value,words", [
    ("3-2", "'3-2': the minimum is above the maximum; write the range as '2-3'"),
    (0, "0 is outside 1-4096"),
    ("0-2", "0-2 is outside 1-4096"),
    ("2-5000", "2-5000 is outside 1-4096"),
    ("abc", "'abc' is not a number of nodes or a range of them; use a count of nodes (1-4096) or a range such as "
            "'2-4' (elastic)"),
    ("2 - 3", "'2 - 3' is not a number of nodes or a range of them"),
    ("-2", "'-2' is not a number of nodes or a range of them"),
    ("2-3-4", "'2-3-4' is not a number of nodes or a range of them"),
    (True, "True is not a number of nodes"),
    (2.5, "2.5 is not a number of nodes"),
    (None, "None is not a number of nodes"),
])
def test_a_bad_node_count_is_refused_with_its_line_and_the_usage(tmp_path, capsys, value, words):
    spec = base_spec(tmp_path, resources={"nodes": value})
    line = _refused(tmp_path, capsys, spec, "resources.nodes")
    assert words in line, line
    assert not (tmp_path / "run").exists()


def test_the_global_batch_check_names_the_counts_that_fail_and_the_lcm_fix(tmp_path, capsys):
    # micro 4 on 2-4 nodes: dp 2, 3, 4; 40 samples are 5 micro-batches per rank at 2 nodes, 3.33 at 3, 2.5 at 4
    spec = base_spec(tmp_path, resources={"nodes": "2-4"}, train={"global_batch_size": 40})
    line = _refused(tmp_path, capsys, spec, "train.global_batch_size")
    assert ("the global batch 40 cannot be kept at every node count of resources.nodes 2-4: not at "
            "3 (40 / (4 x 3) = 3.33333 micro-batches per rank), 4 (40 / (4 x 4) = 2.5 micro-batches per rank)") in line
    # micro 4 x lcm(2, 3, 4) = 48; 2 nodes are fine
    assert "set train.global_batch_size to a multiple of 48, such as 48, or narrow resources.nodes to counts " \
           "that divide it (2)" in line
    assert "at 2 (" not in line and " 2 (" not in line  # a count that keeps it is not named
    # 72 samples: 9 per rank at 2 nodes, 6 at 3, 4.5 at 4; the multiples of 48 on either side of it
    spec = base_spec(tmp_path, resources={"nodes": "2-4"}, train={"global_batch_size": 72})
    line = _refused(tmp_path, capsys, spec, "train.global_batch_size")
    assert "not at 4 (72 / (4 x 4) = 4.5 micro-batches per rank); set train.global_batch_size to a multiple of " \
           "48, such as 48 or 96, or narrow resources.nodes to counts that divide it (2-3)" in line
    s = _validate(tmp_path, resources={"nodes": "2-4"}, train={"global_batch_size": 48})  # the fix validates
    assert [s.batch_plan(world_size=n).accumulate_steps for n in (2, 3, 4)] == [6, 4, 3]


def test_the_default_global_batch_is_checked_against_the_range_too(tmp_path, capsys):
    # no global_batch_size: micro 4 x dp 4 at the most nodes = 16, which 3 nodes cannot keep
    line = _refused(tmp_path, capsys, base_spec(tmp_path, resources={"nodes": "2-4"}), "resources.nodes")
    assert "the global batch 16 (the default: micro batch x dp at the most nodes) cannot be kept" in line
    assert "not at 3 (16 / (4 x 3) = 1.33333 micro-batches per rank)" in line and "multiple of 48" in line


def test_the_fix_names_ranges_one_can_write(tmp_path, capsys):
    # micro 4 on 1-8 nodes, 64 samples: 1, 2, 4 and 8 nodes keep it; 3, 5, 6, 7 do not (4 named at most)
    spec = base_spec(tmp_path, resources={"nodes": "1-8"}, train={"global_batch_size": 64})
    line = _refused(tmp_path, capsys, spec, "train.global_batch_size")
    assert "not at 3 (" in line and "5 (" in line and "6 (" in line and "7 (" in line
    assert "a multiple of 3360, such as 3360" in line  # 4 x lcm(1, ..., 8)
    assert "narrow resources.nodes to counts that divide it (1-2, 4, 8)" in line


def test_a_fixed_count_keeps_its_own_message(tmp_path, capsys):
    spec = base_spec(tmp_path, resources={"nodes": 2}, train={"global_batch_size": 12})
    line = _refused(tmp_path, capsys, spec, "train.global_batch_size")
    assert "12 is not a multiple of micro_batch_size*dp*sharding = 8; use 8 or 16" in line


def test_dp_degree_with_a_range_is_refused(tmp_path, capsys):
    spec = base_spec(tmp_path, resources={"nodes": "2-3"}, train={"global_batch_size": 24, "dp_degree": 2})
    line = _refused(tmp_path, capsys, spec, "train.dp_degree")
    assert "with a node range (resources.nodes 2-3) each attempt's data-parallel degree follows the nodes it gets; " \
           "remove train.dp_degree" in line
    assert "make them equal" not in line


def test_a_range_on_the_local_backend_is_refused(tmp_path, capsys):
    spec = base_spec(tmp_path, cluster={"backend": "local"}, resources={"nodes": "2-3"},
                     train={"global_batch_size": 24})
    line = _refused(tmp_path, capsys, spec, "resources.nodes")
    assert "a node range (2-3) needs cluster.backend: slurm (the local backend runs on this machine only); use a " \
           "count" in line


def test_validate_prints_the_shape_at_every_count(tmp_path, capsys):
    path = write_spec(tmp_path / "s.yaml", base_spec(tmp_path, resources={"nodes": "2-4"},
                                                     train={"global_batch_size": 48}))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("2-4 node(s) x 1 trainer(s), engine dynamic, global batch 48 (2 node(s): dp 2, accumulate 6; "
            "3 node(s): dp 3, accumulate 4; 4 node(s): dp 4, accumulate 3)") in out
    assert main(["validate", str(path), "resources.nodes=3"]) == 0  # an override may fix the count again
    assert "3 node(s) x 1 trainer(s), engine dynamic, global batch 48 (dp 3, accumulate 4)" in capsys.readouterr().out
    assert main(["validate", str(path), "resources.nodes=2-3"]) == 0
    assert "(2 node(s): dp 2, accumulate 6; 3 node(s): dp 3, accumulate 4)" in capsys.readouterr().out


def test_an_attempt_outside_the_range_or_on_part_of_a_node_is_refused(tmp_path):
    spec = load_spec(write_spec(tmp_path / "s.yaml", base_spec(
        tmp_path, resources={"nodes": "2-3", "procs_per_node": 2}, train={"global_batch_size": 48})))
    assert spec.batch_plan(world_size=4).describe() == \
        "2 node(s), world 4: global batch 48 = micro 4 x accumulate 3 x dp 4"
    for world in (2, 5, 8):  # 1 node, 2.5 nodes, 4 nodes
        with pytest.raises(BatchPlanError, match=f"the launcher started {world} trainers, but the spec runs 2 per "
                                                 f"node on 2-3 node"):
            spec.batch_plan(world_size=world)
