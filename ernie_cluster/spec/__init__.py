"""The job spec: one YAML file describes a whole run.

- `problems`: `SpecProblem` (field, message, YAML line) and `SpecError`; the control-character wording
- `sections`: the pydantic sections (cluster, resources, environment, data, model, train, convert), field by field
- `job`: `JobSpec`, its cross-field checks and derived values (dp degree, global batch, compat key)
- `batch`: the global batch at each node count of a range (elastic): `BatchPlan`, and the counts that cannot keep it
- `reading`: YAML with the line of every key, `a.b.c=value` overrides, the line of a field path
- `architectures`: the built-in model configs, config defaults and activations, vocab sizing
- `shape`: the model the trainer will build and the weights it starts from, checked without paddle
- `paths`: the data and model paths that must exist here, and freezing them for the compute nodes
- `load`: `load_spec` / `validate_text` (everything above, all problems at once) and `load_frozen`

This package is on the submit side: it must never import paddle.
"""

from ..slurm import slurm_time_to_seconds  # the one Slurm time parser (stdlib only), used by the spec's checks
from .architectures import (_ERNIE_CONFIG_DEFAULTS, _TRAINER_DEFAULTS, ACTIVATIONS, BUILTIN_CONFIGS, BUILTIN_MODELS,
                            MODEL_SIZE_KEYS, builtin_without_weights, count_vocab_lines, padded_vocab_size)
from .batch import BatchPlan, BatchPlanError
from .job import JobSpec
from .load import load_frozen, load_spec, validate_text
from .paths import local_model_path
from .problems import SpecError, SpecProblem, control_character_message
from .reading import apply_overrides, parse_override
from .sections import (ClusterSection, ConvertSection, DataSection, EnvironmentSection, MaskingSection, ModelSection,
                       RequeuePolicy, ResourcesSection, TrainSection)
from .shape import (ModelShape, corpus_vocab_problems, effective_model_shape, model_shape_problems,
                    starting_weights_problems)

__all__ = ["ACTIVATIONS", "BUILTIN_CONFIGS", "BUILTIN_MODELS", "BatchPlan", "BatchPlanError", "MODEL_SIZE_KEYS",
           "ClusterSection", "ConvertSection", "DataSection", "EnvironmentSection", "JobSpec", "MaskingSection", "ModelSection", "ModelShape",
           "RequeuePolicy", "ResourcesSection", "SpecError", "SpecProblem", "TrainSection", "apply_overrides",
           "builtin_without_weights", "control_character_message", "corpus_vocab_problems", "count_vocab_lines",
           "effective_model_shape", "load_frozen", "load_spec", "local_model_path", "model_shape_problems",
           "padded_vocab_size", "parse_override", "slurm_time_to_seconds", "starting_weights_problems",
           "validate_text",
           "_ERNIE_CONFIG_DEFAULTS", "_TRAINER_DEFAULTS"]  # private, but tests/test_spec.py compares them with paddlenlp
