"""The training program each node runs (`python -m ernie_cluster.train --run-dir RUN`).

Modules: `trainer` (the loop and stop protocol), `engine_static` / `engine_dynamic` (the
two engines), `model` (ERNIE from a config, criterion), `schedule` (LR), `checkpoint`
(atomic, verified, engine-neutral checkpoints), `control` (signals, pid/exit files),
`data` (adapter to data_tools), `metrics` (logs, VisualDL, loss jsonl).
Importing this package does not import paddle.
"""
