"""ernie_cluster: domain-adaptive ERNIE 1.0 pretraining on Slurm from one YAML spec.

Layout follows the pipeline: spec -> render -> submit -> launch -> train -> convert.
Shared by every stage: rundir (the run directory's layout and the records of its state.json and
attempts.jsonl), slurm (every Slurm command), envvars, procs and durable.
The submit side (spec, render, submit, runs, cli) never imports paddle.
"""

__version__ = "0.1.0"
