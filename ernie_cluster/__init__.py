"""ernie_cluster: domain-adaptive ERNIE 1.0 pretraining on Slurm from one YAML spec.

Layout follows the pipeline: spec -> render -> submit -> launch -> train -> convert.
Shared by every stage: rundir (the run directory's layout and the records of its state.json and
attempts.jsonl), slurm (every Slurm command), envvars, procs and durable.
The submit side (spec, render, submit, runs, cli) never imports paddle.
"""

__version__ = "0.1.0"


def _seal_if_frozen() -> None:
    """In a run's frozen copy (<run>/code/site/ernie_cluster), stop an editable install's finder from
    filling in modules the copy lacks (frozen_code.seal_imports). Elsewhere: two string checks, no stat."""
    import os

    site = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = os.path.dirname(site)
    if os.path.basename(site) == "site" and os.path.basename(code) == "code" \
            and os.path.isfile(os.path.join(code, "MANIFEST.json")):
        from .frozen_paths import seal_imports

        seal_imports()


_seal_if_frozen()
