"""The training program every trainer process runs (`python -m ernie_cluster.train --run-dir RUN`).

Modules: `trainer` (the loop and stop protocol), `start` (resume or starting weights),
`engine_static` / `engine_dynamic` / `engine_common` (the two engines and what they share),
`model` (ERNIE from a config, criterion), `schedule` (LR), `checkpoint` (atomic, verified,
engine-neutral checkpoints: `ckpt_format`, `ckpt_write`, `ckpt_read`), `control`
(signals, pid/exit files), `data` (adapter to data_tools), `metrics` (logs, VisualDL, loss
jsonl), `dist_env` (rank and world size from the launcher).
Importing this package does not import paddle.
"""
