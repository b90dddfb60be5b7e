"""`JobSpec`: the whole run in one model. Its sections (spec/sections.py), the checks between fields, and the
values derived from them that render, launch, train and checkpoints share."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml
from pydantic import Field, field_validator

from ..slurm import slurm_time_to_seconds
from .architectures import MODEL_SIZE_KEYS, builtin_without_weights, is_builtin
from .batch import BatchPlan, batch_problems, dp_at, global_batch, plan_at, plan_for_world
from .sections import (ClusterSection, ConvertSection, DataSection, EnvironmentSection, ModelSection, ResourcesSection,
                       Section, TrainSection)


class JobSpec(Section):
    name: str
    output_dir: str = Field(..., description="the run directory: checkpoints, logs, converted model")
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    environment: EnvironmentSection = Field(default_factory=EnvironmentSection)
    data: DataSection
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection
    convert: ConvertSection = Field(default_factory=ConvertSection)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not v or len(v) > 64:
            raise ValueError("must be 1-64 characters")
        return v  # any printable text: every shell use quotes it (control characters: Section)

    @field_validator("output_dir")
    @classmethod
    def _check_output_dir(cls, v: str) -> str:
        # The run directory reaches Slurm's --output (directly and through submitit's folder), where '%' starts
        # a filename pattern and sbatch reads '\' as an escape even inside quotes: the logs would go elsewhere.
        for char, why in (("%", "Slurm expands %-patterns (%j, %u, ...) in --output"),
                          ("\\", "sbatch reads a backslash in an #SBATCH line as an escape")):
            if char in v:
                raise ValueError(f"{v!r} contains {char!r}, and {why}; choose a directory path without {char!r}")
        return v

    def cross_field_errors(self) -> List[Tuple[str, str]]:
        """What no single field shows, as (field path, message with the fix): all of them, reported together."""
        errors: List[Tuple[str, str]] = []
        t, r = self.train, self.resources
        world = r.world_size
        if t.device == "gpu" and r.gpus_per_node == 0 and self.cluster.backend == "slurm":
            errors.append(("resources.gpus_per_node", "train.device is 'gpu' but no GPUs are requested; set gpus_per_node >= 1 or train.device: cpu"))
        if t.device == "gpu" and r.procs_per_node is not None and r.gpus_per_node and r.procs_per_node != r.gpus_per_node:
            errors.append(("resources.procs_per_node", f"with GPUs there is one trainer per GPU; remove procs_per_node or set it to {r.gpus_per_node}"))
        model_parallel = t.mp_degree * t.pp_degree * t.sharding_degree
        dp = self.dp_degree
        if dp * model_parallel != world and not (r.elastic and t.dp_degree is not None):  # that one: below
            errors.append((
                "train.dp_degree",
                f"dp*mp*pp*sharding = {dp}*{t.mp_degree}*{t.pp_degree}*{t.sharding_degree} = {dp * model_parallel} "
                f"but nodes*trainers_per_node = {r.max_nodes}*{r.trainers_per_node} = {world}; make them equal",
            ))
        errors += batch_problems(self)
        if r.elastic and t.dp_degree is not None:
            errors.append(("train.dp_degree", f"with a node range (resources.nodes {r.nodes}) each attempt's "
                                              f"data-parallel degree follows the nodes it gets; remove train.dp_degree"))
        if r.elastic and self.cluster.backend == "local":
            errors.append(("resources.nodes", f"a node range ({r.nodes}) needs cluster.backend: slurm (the local "
                                              f"backend runs on this machine only); use a count"))
        if t.min_lr > t.max_lr:
            errors.append(("train.min_lr", f"min_lr {t.min_lr} is above max_lr {t.max_lr}; the reference's inverted default, swap them"))
        if t.resolved_engine == "static" and t.device == "cpu" and world > 1:
            errors.append(("train.engine", "the static engine has no CPU communicator for several processes; use engine: dynamic (or auto) on the CPU"))
        if t.sharding_degree > 1:
            errors.append(("train.sharding_degree", "optimizer sharding is not supported yet: a sharded static program "
                           "keeps each parameter on its owner rank only, and checkpoints, snapshots and conversion read "
                           "them all from rank 0; set sharding_degree: 1 (ERNIE 1.0 base trains in data parallel on "
                           "one V100 per rank)"))
        elif t.resolved_engine == "dynamic" and (t.mp_degree > 1 or t.pp_degree > 1):
            errors.append(("train.engine", "the dynamic engine does data parallel only; set mp/pp/sharding degrees to 1 or use engine: static"))
        if t.mp_degree > 1 or t.pp_degree > 1:
            errors.append(("train.mp_degree" if t.mp_degree > 1 else "train.pp_degree",
                           "tensor/pipeline parallel are not supported for ERNIE 1.0 base (it fits one V100); use dp and sharding"))
        if t.use_amp and t.device == "cpu":
            errors.append(("train.use_amp", "AMP (fp16) needs a GPU; set use_amp: false for device: cpu"))
        if t.decay_steps is not None and t.decay_steps < t.warmup_rate * t.max_steps:
            errors.append(("train.decay_steps", f"decay_steps {t.decay_steps} ends before warmup ({t.warmup_rate}*{t.max_steps} steps)"))
        masking = self.data.masking
        if masking.max_predictions_per_seq is not None and masking.max_predictions_per_seq > t.max_seq_len:
            errors.append(("data.masking.max_predictions_per_seq", f"must not exceed train.max_seq_len {t.max_seq_len}"))
        if self.cluster.backend == "local" and t.device == "gpu" and r.max_nodes > 1:
            errors.append(("resources.nodes", "the local backend runs on this machine only; use nodes: 1"))
        lead = self.cluster.requeue.signal_lead_s
        if lead >= slurm_time_to_seconds(self.cluster.time):
            errors.append(("cluster.requeue.signal_lead_s", f"{lead}s is not shorter than cluster.time {self.cluster.time}"))
        if self.data.raw_corpus is not None and self.data.vocab_file is None:
            errors.append(("data.vocab_file", "tokenizing data.raw_corpus needs a local vocab file (nothing is downloaded)"))
        if is_builtin(self.model.model_name_or_path) and not self.model.random_init:
            errors.append(("model.model_name_or_path", builtin_without_weights(self.model.model_name_or_path)))
        from ..container import container_problems  # the container's binds come from the fields above

        errors += container_problems(self)
        return errors

    def starts_from(self) -> str:
        """One line: where the weights of step 0 come from."""
        m = self.model
        if m.random_init:
            what = "the built-in" if is_builtin(m.model_name_or_path) else "the config of"
            return f"random weights (model.random_init), architecture of {what} {m.model_name_or_path}"
        return f"the weights in {m.model_name_or_path} (DAPT)"

    # Derived values used by render, train and checkpoints: at the most nodes; an attempt's own: batch_plan.
    @property
    def dp_degree(self) -> int:
        return dp_at(self, self.resources.max_nodes)

    @property
    def global_batch_size(self) -> int:
        return global_batch(self)

    @property
    def accumulate_steps(self) -> int:
        return plan_at(self, self.resources.max_nodes).accumulate_steps

    def batch_plan(self, *, world_size: int) -> BatchPlan:
        """The data-parallel shape of an attempt whose launcher started `world_size` trainers (BatchPlanError
        when the spec cannot train at that world)."""
        return plan_for_world(self, world_size)

    @property
    def decay_steps(self) -> int:
        return self.train.decay_steps or self.train.max_steps

    def run_dir(self) -> Path:
        return Path(self.output_dir).expanduser().resolve()

    def convert_dir(self) -> Path:
        return Path(self.convert.output_dir).resolve() if self.convert.output_dir else self.run_dir() / "converted"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    def compat_key(self) -> Dict[str, Any]:
        """What a checkpoint must share with the spec resuming from it.

        model.random_init and model.allow_missing_heads are not in it: they decide step 0 only, and a checkpoint
        holds the weights it has trained (trainer_state.json's `starting_weights` says where they began).
        """
        m = self.model
        return {
            "global_batch_size": self.global_batch_size,
            "max_seq_len": self.train.max_seq_len,
            "model": {k: getattr(m, k) for k in ("model_name_or_path", *MODEL_SIZE_KEYS)},
            # what the sample mapping depends on: change one and a consumed-samples count means other data
            "data": {"input_prefix": self.data.input_prefix, "split": self.data.split,
                     "short_seq_prob": self.data.masking.short_seq_prob, "binary_head": self.data.masking.binary_head,
                     # only when true: checkpoints from before the option lack the key, so they resume with
                     # false and are refused under the new default (data.shuffle_documents: '<absent>' vs True)
                     **({"shuffle_documents": True} if self.data.shuffle_documents else {})},
            "seed": self.train.seed,
        }
