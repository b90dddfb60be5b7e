"""The launch layer: runs once per node inside a Slurm allocation (or locally).

- `cluster_env`: who this node is (job id, restart count, node rank, nodes, main address and port)
- `command`: the exact `paddle.distributed.launch` command line for a node
- `prepare`: data preparation on node 0, waiting for it on the others
- `attempt`: how an attempt ended, and whether it may be requeued
- `lock`: one live run per run directory (the node's lock on it)
- `supervise`: paddle's launcher and the trainers under it: signals forwarded by pid, stops, watchdogs
- `exchange`: node-to-node results and node 0's decision, through files in the attempt directory
- `preflight` (`preflight_checks`): each node's checks before its trainers start, judged across nodes
- `conclude`: node 0's conclusion of an attempt: combine, decide, record, requeue
- `node_faults`: which nodes a failure is attributed to, which to exclude, a dead node's record (pure);
  `slurm_actions`: node 0's Slurm side of it (ExcNodeList after the requeue, sacct after a NODE_FAIL)
- `results`: what a node launcher returns
- `node`: `NodeLauncher` (one attempt, top to bottom); `__main__`: `python -m ernie_cluster.launch`

Nothing here imports paddle: this runs on the node before any trainer.
"""

from .cluster_env import ClusterEnvError, LocalEnvironment, SlurmEnvironment, expand_hostlist
from .command import build_launch_command
from .node import LaunchResult, NodeLauncher

__all__ = ["ClusterEnvError", "LocalEnvironment", "SlurmEnvironment", "expand_hostlist",
           "build_launch_command", "LaunchResult", "NodeLauncher"]
