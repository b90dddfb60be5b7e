"""The global batch at each node count: how many data-parallel ranks an attempt has and how many micro-batches
each accumulates, so that every attempt, on whatever number of nodes Slurm gave it, trains on the same samples
per step with the same learning-rate schedule.

`resources.nodes` is a count or a range (`2-4`, elastic). The global batch is fixed for the whole run (its
default is micro batch x the data-parallel degree at the most nodes); at n nodes,
`global batch = micro batch x dp(n) x accumulation(n)` must hold with a whole accumulation, for every n in the
range. `batch_problems` names the counts where it does not, with the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Tuple

if TYPE_CHECKING:
    from .job import JobSpec


class BatchPlanError(ValueError):
    """The launcher started a world the spec cannot train at (a node count outside the range, a partial node)."""


@dataclass(frozen=True)
class BatchPlan:
    """One attempt's data-parallel shape: `global_batch_size = micro_batch_size * dp_degree * accumulate_steps`."""

    nodes: int
    world_size: int
    dp_degree: int
    accumulate_steps: int
    micro_batch_size: int
    global_batch_size: int

    def describe(self) -> str:
        return (f"{self.nodes} node(s), world {self.world_size}: global batch {self.global_batch_size} = micro "
                f"{self.micro_batch_size} x accumulate {self.accumulate_steps} x dp {self.dp_degree}")


def dp_at(spec: "JobSpec", nodes: int) -> int:
    """The data-parallel degree at `nodes` nodes (train.dp_degree when set: a fixed node count only)."""
    t = spec.train
    if t.dp_degree is not None:
        return t.dp_degree
    return max(1, nodes * spec.resources.trainers_per_node // (t.mp_degree * t.pp_degree * t.sharding_degree))


def global_batch(spec: "JobSpec") -> int:
    """The run's global batch: train.global_batch_size, else micro x dp x sharding at the most nodes."""
    t = spec.train
    return t.global_batch_size or t.micro_batch_size * dp_at(spec, spec.resources.max_nodes) * t.sharding_degree


def plan_at(spec: "JobSpec", nodes: int) -> BatchPlan:
    """The batch plan at `nodes` nodes (checked by `batch_problems` for every count of the range)."""
    t = spec.train
    dp = dp_at(spec, nodes)
    gbs = global_batch(spec)
    per_step = t.micro_batch_size * dp * t.sharding_degree
    return BatchPlan(nodes=nodes, world_size=nodes * spec.resources.trainers_per_node, dp_degree=dp,
                     accumulate_steps=max(1, gbs // per_step), micro_batch_size=t.micro_batch_size,
                     global_batch_size=gbs)


def plan_for_world(spec: "JobSpec", world_size: int) -> BatchPlan:
    """The batch plan of the world the launcher started; BatchPlanError when the spec cannot train at it."""
    r, t = spec.resources, spec.train
    per_node = r.trainers_per_node
    nodes, rest = divmod(world_size, per_node)
    if rest or not r.min_nodes <= nodes <= r.max_nodes:
        raise BatchPlanError(f"the launcher started {world_size} trainers, but the spec runs {per_node} per node on "
                             f"{r.nodes_text} node(s)")
    plan = plan_at(spec, nodes)
    if plan.global_batch_size != t.micro_batch_size * plan.dp_degree * plan.accumulate_steps * t.sharding_degree:
        raise BatchPlanError(f"global batch {plan.global_batch_size} is no whole number of micro-batches of "
                             f"{t.micro_batch_size} on {plan.dp_degree} data-parallel ranks ({nodes} nodes)")
    return plan


def _runs(counts: List[int]) -> List[str]:
    """Consecutive counts as the ranges one can write: [1, 2, 4, 5, 6, 8] -> ['1-2', '4-6', '8']."""
    runs: List[List[int]] = []
    for n in counts:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return [f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs]


def batch_problems(spec: "JobSpec") -> List[Tuple[str, str]]:
    """The node counts of the range at which the global batch is no whole number of micro-batches per rank."""
    t, r = spec.train, spec.resources
    gbs = global_batch(spec)
    bad = [n for n in r.node_counts if gbs % (t.micro_batch_size * dp_at(spec, n) * t.sharding_degree)]
    if not bad:
        return []
    if not r.elastic:
        per_step = t.micro_batch_size * dp_at(spec, r.max_nodes) * t.sharding_degree
        return [("train.global_batch_size",
                 f"{gbs} is not a multiple of micro_batch_size*dp*sharding = {per_step}; "
                 f"use {max(per_step, gbs // per_step * per_step)} or {(gbs // per_step + 1) * per_step}")]
    unit = t.micro_batch_size * t.sharding_degree * math.lcm(*(dp_at(spec, n) for n in r.node_counts))
    good = [n for n in r.node_counts if n not in bad]
    counts = ", ".join(f"{n} ({gbs} / ({t.micro_batch_size} x {dp_at(spec, n)}) = "
                       f"{gbs / (t.micro_batch_size * dp_at(spec, n)):g} micro-batches per rank)" for n in bad[:4])
    more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
    lower, upper = max(unit, gbs // unit * unit), (gbs // unit + 1) * unit
    fix = f"set train.global_batch_size to a multiple of {unit}, such as {lower}" + \
          (f" or {upper}" if upper != lower else "")
    if good:
        fix += f", or narrow resources.nodes to counts that divide it ({', '.join(_runs(good)[:8])})"
    where = "train.global_batch_size" if t.global_batch_size is not None else "resources.nodes"
    default = "" if t.global_batch_size is not None else " (the default: micro batch x dp at the most nodes)"
    return [(where, f"the global batch {gbs}{default} cannot be kept at every node count of resources.nodes "
                    f"{r.nodes_text}: not at {counts}{more}; {fix}")]
