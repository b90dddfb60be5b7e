"""Rank and world size as `paddle.distributed.launch` hands them to a trainer.

Without a launcher (a plain `python -m ernie_cluster.train`) the trainer is rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _int_env(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                continue
    return default


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_size: int
    node_rank: int

    @classmethod
    def from_environ(cls) -> "DistEnv":
        rank = _int_env("PADDLE_GLOBAL_RANK", "PADDLE_TRAINER_ID", default=0)
        world = _int_env("PADDLE_GLOBAL_SIZE", "PADDLE_TRAINERS_NUM", default=1)
        local_rank = _int_env("PADDLE_LOCAL_RANK", default=0)
        local_size = _int_env("PADDLE_LOCAL_SIZE", default=1)
        node_rank = _int_env("PADDLE_NODE_RANK", default=rank // max(1, local_size))
        if not 0 <= rank < world:
            raise RuntimeError(f"inconsistent launcher environment: rank {rank} not in [0, {world})")
        return cls(rank, world, local_rank, local_size, node_rank)
