"""The job spec: one YAML file describes a whole run.

Loading reads YAML with `yaml.safe_load` semantics while remembering the line of
every key, applies `a.b.c=value` overrides, then validates with pydantic. All
problems are collected and reported together as `SpecError`, each naming the
field, its YAML line when known, and how to fix it.

This module is on the submit side: it must never import paddle.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from .envvars import PADDLE_LAUNCH_OVERRIDES, is_secret
from .slurm import slurm_time_to_seconds  # noqa: F401  (the one Slurm time parser; stdlib only)

# ---------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------

_MEM = re.compile(r"^\d+[KMGT]?$")
_SIGNALS = ("USR1", "USR2", "TERM", "INT")


# C0 controls (tab too), DEL, C1 controls (NEL U+0085 among them) and the Unicode line/paragraph separators.
# Each ends or breaks a line for some reader of the value: bash, sbatch's #SBATCH parser, YAML, a terminal.
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_NAMES = {"\n": "newline", "\r": "carriage return", "\t": "tab", "\x00": "NUL byte", "\x1b": "escape character",
                  "\x7f": "DEL character", "\x85": "next-line character (U+0085)",
                  "\u2028": "line separator (U+2028)", "\u2029": "paragraph separator (U+2029)"}


def control_character_message(text: str, *, what: str = "") -> Optional[str]:
    """Why `text` cannot go into a script or a command line, or None when it can."""
    m = _CONTROL_CHARS.search(text)
    if m is None:
        return None
    char = m.group()
    name = _CONTROL_NAMES.get(char, f"control character {char!r}")
    fix = ("use spaces instead" if char == "\t" else
           "write each line as its own list item" if what == "item" and char in "\n\r\x85\u2028\u2029" else "")
    return (f"{what + ' ' if what else ''}{text!r} contains a {name} at character {m.start() + 1}; control characters "
            f"and line breaks are refused in every value, since one would start a new shell line or #SBATCH directive "
            f"in the rendered scripts: remove the {name}{'; ' + fix if fix else ''}")


def _strings_in(value: Any, entry: str = ""):
    """(entry, role, text) for every string in a raw field value: the value, dict keys and values, list items."""
    if isinstance(value, str):
        yield entry, "item" if entry.endswith("]") else "value", value
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield entry, "key", key
            yield from _strings_in(item, f"{entry}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _strings_in(item, f"{entry}[{i}]")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    # One check for every string of every section, so a field added later is covered without a line here.
    # `before`: it runs ahead of the field's own validators, so the message is about the character.
    @field_validator("*", mode="before")
    @classmethod
    def _no_control_characters(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            return value  # a section: it checks its own fields
        for entry, role, text in _strings_in(value):
            message = control_character_message(text, what="key" if role == "key" else "item" if role == "item" else "")
            if message:
                raise PydanticCustomError("control_character", "{message}", {"message": message, "entry": entry})
        return value


class RequeuePolicy(_Section):
    """What happens when Slurm warns that the job will end (preemption or time limit)."""

    enabled: bool = True
    max_requeues: int = Field(20, ge=0, le=1000, description="cap on every automatic requeue (preemptions, timeouts, failures)")
    max_timeout_requeues: Optional[int] = Field(
        None, ge=0, description="separate cap for time-limit requeues; default: max_requeues"
    )
    # USR1/USR2 only: srun turns a TERM into SIGKILL of its tasks, and does not forward a lone INT.
    signal: Literal["USR1", "USR2"] = "USR2"
    signal_lead_s: int = Field(120, ge=10, le=3600, description="seconds before the end Slurm sends the signal")
    max_failure_requeues: int = Field(
        0, ge=0, le=100, description="requeues after a failure that may be transient (paddle's launcher died, a "
                                     "trainer killed or crashed, a rendezvous that hung); never after a non-finite "
                                     "loss or a setup error")


class ClusterSection(_Section):
    backend: Literal["slurm", "local"] = "slurm"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: str = "24:00:00"
    constraint: Optional[str] = None
    exclusive: bool = False
    extra_sbatch: Dict[str, str] = Field(default_factory=dict, description="more sbatch options: {option: value}")
    requeue: RequeuePolicy = Field(default_factory=RequeuePolicy)
    convert_partition: Optional[str] = None
    convert_time: str = "01:00:00"
    master_port: int = Field(0, ge=0, le=65535, description="0: derive a port from the job id")

    @field_validator("time", "convert_time", mode="before")
    @classmethod
    def _minutes_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # `time: 90` is 90 minutes, as in Slurm

    @field_validator("time", "convert_time")
    @classmethod
    def _check_time(cls, v: str) -> str:
        seconds = slurm_time_to_seconds(v)
        if seconds <= 0:
            raise ValueError("must be longer than zero")
        return v

    @field_validator("partition", "account", "qos", "constraint", "convert_partition")
    @classmethod
    def _check_token(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9._,&|:\[\]*!-]+", v):
            raise ValueError(f"{v!r} contains characters Slurm does not accept here")
        return v

    @field_validator("extra_sbatch")
    @classmethod
    def _check_extra(cls, v: Dict[str, str]) -> Dict[str, str]:
        for key in v:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
                raise ValueError(f"option name {key!r} must look like 'mail-type' (no leading dashes)")
            if key in _MANAGED_SBATCH:
                raise ValueError(f"--{key} is set by ernie_cluster; use {_MANAGED_SBATCH[key]} instead")
        return {k: str(val) for k, val in v.items()}


_MANAGED_SBATCH = {
    "nodes": "resources.nodes",
    "ntasks-per-node": "resources (one launcher per node)",
    "gpus-per-node": "resources.gpus_per_node",
    "gres": "resources.gpus_per_node",
    "cpus-per-task": "resources.cpus_per_task",
    "mem": "resources.mem",
    "time": "cluster.time",
    "partition": "cluster.partition",
    "job-name": "name",
    "output": "output_dir",
    "error": "output_dir",
    "signal": "cluster.requeue.signal",
    "requeue": "cluster.requeue.enabled",
    "dependency": "the convert job's automatic afterok",
}


class ResourcesSection(_Section):
    nodes: int = Field(1, ge=1, le=4096)
    gpus_per_node: int = Field(0, ge=0, le=16)
    procs_per_node: Optional[int] = Field(
        None, ge=1, le=128, description="trainer processes per node; default: gpus_per_node, or 1 on CPU"
    )
    cpus_per_task: int = Field(1, ge=1, le=512)
    mem: Optional[str] = None

    @field_validator("mem")
    @classmethod
    def _check_mem(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not _MEM.fullmatch(str(v)):
            raise ValueError(f"{v!r} is not a Slurm memory size; use e.g. '64G', '4000M' or '0' (all)")
        return None if v is None else str(v)

    @property
    def trainers_per_node(self) -> int:
        if self.procs_per_node is not None:
            return self.procs_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.trainers_per_node


class EnvironmentSection(_Section):
    setup: List[str] = Field(default_factory=list, description="shell lines run before training, e.g. 'module load cuda'")
    env: Dict[str, str] = Field(default_factory=dict)
    python: Optional[str] = Field(None, description="interpreter on the compute nodes; default: the one running submit")

    @field_validator("env")
    @classmethod
    def _check_env(cls, v: Dict[str, Any]) -> Dict[str, str]:
        for key in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if is_secret(key):
                raise ValueError(f"{key!r} looks like a secret: environment.env is written into spec.yaml and the sbatch "
                                 f"scripts, and such variables are kept away from the trainers (paddle logs its "
                                 f"environment); training and conversion need no credentials, so remove it")
            if key in PADDLE_LAUNCH_OVERRIDES:
                raise ValueError(f"{key!r} would override paddle.distributed.launch's flags, which ernie_cluster sets "
                                 f"from the Slurm allocation; use resources.* / cluster.* instead")
        return {k: str(val) for k, val in v.items()}


class MaskingSection(_Section):
    strategy: Literal["whole_word", "token"] = "whole_word"
    span: Literal["ngram", "geometric"] = "ngram"
    masked_lm_prob: float = Field(0.15, gt=0, lt=1)
    max_ngrams: int = Field(3, ge=1, le=10)
    favor_longer_ngram: bool = False
    max_predictions_per_seq: Optional[int] = Field(
        None, ge=1, description="masked slots per sequence; default round(max_seq_len * masked_lm_prob), as the reference")
    short_seq_prob: float = Field(0.1, ge=0, le=1)
    binary_head: bool = Field(True, description="sentence-order prediction head")
    to_chinese_char: bool = True


class DataSection(_Section):
    input_prefix: str = Field(..., description="<prefix>_ids.npy and <prefix>_idx.npz, or where to write them; "
                                               "or a directory: all such pairs in it, as one corpus")
    raw_corpus: Optional[str] = Field(None, description="text/jsonl corpus; tokenized first when the prefix files are missing")
    vocab_file: Optional[str] = None
    split: str = "949,50,1"
    shuffle_documents: bool = Field(
        True, description="documents go to train/valid/test by a seeded shuffle (train.seed); false: contiguous "
                          "ranges in file order, as runs begun before this option")
    split_sentences: Optional[Literal["auto", "all", "none"]] = Field(
        None, description="sentence splitting when tokenizing data.raw_corpus; default the tokenizer's auto")
    chinese: bool = True
    whole_word_segment: bool = True
    masking: MaskingSection = Field(default_factory=MaskingSection)

    @field_validator("split")
    @classmethod
    def _check_split(cls, v: str) -> str:
        parts = [p.strip() for p in str(v).split(",")]
        try:
            weights = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"{v!r} must be comma-separated numbers such as '949,50,1'") from None
        if len(weights) != 3 or any(w < 0 for w in weights) or weights[0] <= 0:
            raise ValueError(f"{v!r} must be three non-negative weights train,valid,test with train > 0")
        return ",".join(parts)


class ModelSection(_Section):
    model_name_or_path: str = Field(
        "ernie-1.0-base-zh", description="the model directory whose weights training starts from (DAPT), or a "
                                         "built-in architecture name together with random_init: true")
    random_init: bool = Field(
        False, description="pretrain from scratch: the architecture of the built-in name or of the directory's "
                           "config, with random weights (a directory's weights are not read)")
    allow_missing_heads: bool = Field(
        False, description="start the pretraining heads (cls.*) from a fresh initialisation when the model "
                           "directory has none (an ErnieModel-only directory); the encoder must be complete")
    vocab_size: Optional[int] = Field(None, ge=8)
    hidden_size: Optional[int] = Field(None, ge=8)
    num_hidden_layers: Optional[int] = Field(None, ge=1)
    num_attention_heads: Optional[int] = Field(None, ge=1)
    intermediate_size: Optional[int] = Field(None, ge=8)
    max_position_embeddings: Optional[int] = Field(None, ge=8)
    type_vocab_size: Optional[int] = Field(None, ge=1)
    hidden_dropout_prob: float = Field(0.1, ge=0, lt=1)
    attention_probs_dropout_prob: float = Field(0.1, ge=0, lt=1)


class TrainSection(_Section):
    engine: Literal["auto", "static", "dynamic"] = "auto"
    device: Literal["gpu", "cpu"] = "gpu"
    max_seq_len: int = Field(512, ge=8, le=8192)
    micro_batch_size: int = Field(8, ge=1)
    global_batch_size: Optional[int] = Field(None, ge=1, description="default: micro_batch_size * dp * sharding")
    dp_degree: Optional[int] = Field(None, ge=1, description="default: world size / (mp*pp*sharding)")
    mp_degree: int = Field(1, ge=1)
    pp_degree: int = Field(1, ge=1)
    sharding_degree: int = Field(1, ge=1)
    use_amp: bool = False
    amp_init_loss_scaling: float = Field(32768.0, gt=0)
    use_recompute: bool = False
    enable_addto: bool = True
    lr_decay_style: Literal["linear", "cosine", "none"] = "linear"
    max_lr: float = Field(1e-4, gt=0)
    min_lr: float = Field(1e-5, ge=0)
    warmup_rate: float = Field(0.01, ge=0, le=1)
    decay_steps: Optional[int] = Field(None, ge=1, description="step where the LR reaches min_lr; default: max_steps")
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="global-norm clip; 0 disables")
    adam_beta1: float = Field(0.9, gt=0, lt=1)
    adam_beta2: float = Field(0.999, gt=0, lt=1)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_steps: int = Field(..., ge=1)
    save_steps: int = Field(10000, ge=1)
    checkpoint_steps: int = Field(500, ge=1)
    checkpoint_on_signal: bool = Field(
        True, description="save at the next step boundary when warned; false reproduces the reference (benchmarks)")
    keep_checkpoints: int = Field(2, ge=2, le=100, description="complete checkpoints kept; the newest two at least")
    logging_freq: int = Field(20, ge=1)
    eval_freq: int = Field(1000, ge=1)
    eval_iters: int = Field(10, ge=0)
    seed: int = Field(1234, ge=0, le=2**31 - 1)
    num_workers: int = Field(2, ge=0, le=64)

    @property
    def resolved_engine(self) -> str:
        """Static Fleet on GPUs; dynamic data-parallel on the CPU, where static collectives do not exist."""
        if self.engine != "auto":
            return self.engine
        return "static" if self.device == "gpu" else "dynamic"


class ConvertSection(_Section):
    enabled: bool = True
    output_dir: Optional[str] = Field(None, description="default: <output_dir>/converted")
    verify: bool = Field(True, description="run one batch through static and converted models and compare")
    tolerance: float = Field(1e-4, gt=0)


class JobSpec(_Section):
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
        return v  # any printable text: every shell use quotes it (control characters: _Section)

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

    # Cross-field checks. Each returns (field path, message) so all are reported together.
    def cross_field_errors(self) -> List[Tuple[str, str]]:
        errors: List[Tuple[str, str]] = []
        t, r = self.train, self.resources
        world = r.world_size
        if t.device == "gpu" and r.gpus_per_node == 0 and self.cluster.backend == "slurm":
            errors.append(("resources.gpus_per_node", "train.device is 'gpu' but no GPUs are requested; set gpus_per_node >= 1 or train.device: cpu"))
        if t.device == "gpu" and r.procs_per_node is not None and r.gpus_per_node and r.procs_per_node != r.gpus_per_node:
            errors.append(("resources.procs_per_node", f"with GPUs there is one trainer per GPU; remove procs_per_node or set it to {r.gpus_per_node}"))
        model_parallel = t.mp_degree * t.pp_degree * t.sharding_degree
        dp = t.dp_degree if t.dp_degree is not None else max(1, world // model_parallel)
        if dp * model_parallel != world:
            errors.append((
                "train.dp_degree",
                f"dp*mp*pp*sharding = {dp}*{t.mp_degree}*{t.pp_degree}*{t.sharding_degree} = {dp * model_parallel} "
                f"but nodes*trainers_per_node = {r.nodes}*{r.trainers_per_node} = {world}; make them equal",
            ))
        per_step = t.micro_batch_size * dp * t.sharding_degree
        if t.global_batch_size is not None and t.global_batch_size % per_step:
            errors.append((
                "train.global_batch_size",
                f"{t.global_batch_size} is not a multiple of micro_batch_size*dp*sharding = {per_step}; "
                f"use {max(per_step, t.global_batch_size // per_step * per_step)} or {(t.global_batch_size // per_step + 1) * per_step}",
            ))
        if t.min_lr > t.max_lr:
            errors.append(("train.min_lr", f"min_lr {t.min_lr} is above max_lr {t.max_lr}; the reference's inverted default, swap them"))
        if t.resolved_engine == "static" and t.device == "cpu" and world > 1:
            errors.append(("train.engine", "the static engine has no CPU communicator for several processes; use engine: dynamic (or auto) on the CPU"))
        if t.sharding_degree > 1:
            errors.append(("train.sharding_degree", "optimizer sharding is not supported yet: a sharded static program "
                           "keeps each parameter on its owner rank only, and checkpoints, snapshots and conversion read "
                           "them all from rank 0; set sharding_degree: 1 (ERNIE 1.0 base trains in data parallel on "
                           "one V100 per rank)"))
        elif t.resolved_engine == "dynamic" and (t.mp_degree > 1 or t.pp_degree > 1 or t.sharding_degree > 1):
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
        if self.cluster.backend == "local" and t.device == "gpu" and r.nodes > 1:
            errors.append(("resources.nodes", "the local backend runs on this machine only; use nodes: 1"))
        lead = self.cluster.requeue.signal_lead_s
        if lead >= slurm_time_to_seconds(self.cluster.time):
            errors.append(("cluster.requeue.signal_lead_s", f"{lead}s is not shorter than cluster.time {self.cluster.time}"))
        if self.data.raw_corpus is not None and self.data.vocab_file is None:
            errors.append(("data.vocab_file", "tokenizing data.raw_corpus needs a local vocab file (nothing is downloaded)"))
        if _looks_builtin(self.model.model_name_or_path) and not self.model.random_init:
            errors.append(("model.model_name_or_path", builtin_without_weights(self.model.model_name_or_path)))
        return errors

    def starts_from(self) -> str:
        """One line: where the weights of step 0 come from."""
        m = self.model
        if m.random_init:
            what = "the built-in" if _looks_builtin(m.model_name_or_path) else "the config of"
            return f"random weights (model.random_init), architecture of {what} {m.model_name_or_path}"
        return f"the weights in {m.model_name_or_path} (DAPT)"

    # Derived values used by render, train and checkpoints.
    @property
    def dp_degree(self) -> int:
        t = self.train
        if t.dp_degree is not None:
            return t.dp_degree
        return max(1, self.resources.world_size // (t.mp_degree * t.pp_degree * t.sharding_degree))

    @property
    def global_batch_size(self) -> int:
        t = self.train
        return t.global_batch_size or t.micro_batch_size * self.dp_degree * t.sharding_degree

    @property
    def accumulate_steps(self) -> int:
        t = self.train
        return self.global_batch_size // (t.micro_batch_size * self.dp_degree * t.sharding_degree)

    @property
    def decay_steps(self) -> int:
        return self.train.decay_steps or self.train.max_steps

    def run_dir(self, base: Optional[Path] = None) -> Path:
        path = Path(self.output_dir).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        return path.resolve()

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
            "model": {k: getattr(m, k) for k in (
                "model_name_or_path", "vocab_size", "hidden_size", "num_hidden_layers",
                "num_attention_heads", "intermediate_size", "max_position_embeddings", "type_vocab_size")},
            # what the sample mapping depends on: change one and a consumed-samples count means other data
            "data": {"input_prefix": self.data.input_prefix, "split": self.data.split,
                     "short_seq_prob": self.data.masking.short_seq_prob, "binary_head": self.data.masking.binary_head,
                     # only when true: checkpoints from before the option lack the key, so they resume with
                     # false and are refused under the new default (data.shuffle_documents: '<absent>' vs True)
                     **({"shuffle_documents": True} if self.data.shuffle_documents else {})},
            "seed": self.train.seed,
        }


# ---------------------------------------------------------------------------
# The model shape the trainer will build (without importing paddle)
# ---------------------------------------------------------------------------

_BASE_ZH = {"vocab_size": 18000, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "max_position_embeddings": 513, "type_vocab_size": 2,
            "hidden_act": "relu", "pad_token_id": 0}
# ErnieConfig(**ErnieModel.pretrained_init_configuration[name]) in paddlenlp 2.8.1, for the shape keys.
# tests/test_spec.py compares this table with paddlenlp and with the trainer's model_config(), so they cannot drift.
BUILTIN_CONFIGS: Dict[str, Dict[str, Any]] = {
    "ernie-1.0-base-zh": _BASE_ZH,
    "ernie-1.0": _BASE_ZH,  # paddlenlp's deprecated alias of ernie-1.0-base-zh
    "ernie-1.0-large-zh-cw": {**_BASE_ZH, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                              "max_position_embeddings": 512},  # intermediate 3072 and vocab 18000: paddlenlp's values
}
BUILTIN_MODELS = tuple(BUILTIN_CONFIGS)
# What a config file may leave out: the trainer's setdefaults (train/model.py), then ErnieConfig's own defaults.
_TRAINER_DEFAULTS = {"hidden_act": "relu", "type_vocab_size": 2, "pad_token_id": 0}
_ERNIE_CONFIG_DEFAULTS = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                          "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 16,
                          "hidden_act": "gelu", "pad_token_id": 0}
MODEL_SIZE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "max_position_embeddings", "type_vocab_size")
# paddle.nn.TransformerEncoderLayer looks hidden_act up in paddle.nn.functional; these names exist there
# (tests/test_spec.py checks each against paddle).
ACTIVATIONS = ("relu", "gelu", "silu", "swish", "mish", "elu", "selu", "celu", "leaky_relu", "relu6", "sigmoid",
               "tanh", "hardswish", "hardsigmoid", "hardtanh", "softplus", "softsign", "tanhshrink", "log_sigmoid")


def _looks_builtin(name: str) -> bool:
    return name in BUILTIN_MODELS


def builtin_without_weights(name: str) -> str:
    """Why a built-in name alone is refused, and the two ways on."""
    return (f"{name!r} is a built-in architecture, not a set of weights: training would start from random weights "
            f"(pretraining from scratch), not continue the released ERNIE 1.0 (domain-adaptive pretraining). For "
            f"DAPT, fetch the released weights with `python -m ernie_cluster pretrained {name} --out DIR` on a machine "
            f"that reaches PaddleNLP's hosting, copy DIR to the cluster and set model.model_name_or_path: DIR; to "
            f"pretrain from scratch with this architecture, set model.random_init: true")


def local_model_path(name: str) -> Optional[Path]:
    """The model directory (or the reference scripts' ``static_vars`` prefix) `name` names on this machine, or None."""
    if _looks_builtin(name):
        return None
    p = _abs(name)
    if p.is_dir() or Path(f"{p}.pdparams").is_file() or (p.is_file() and p.name == "static_vars.pdparams"):
        return p
    return None


def padded_vocab_size(n: int, multiple: int = 8) -> int:
    """The trainer's vocab_size for a vocab file of n lines when model.vocab_size is not given."""
    return -(-n // multiple) * multiple


def count_vocab_lines(path: Path) -> int:
    """Lines of a vocab file: its token count, for the spec checks and the trainer alike."""
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


@dataclass
class ModelShape:
    """The effective model config (the keys known here) and the spec field each value comes from."""

    config: Dict[str, Any]
    origin: Dict[str, str]
    vocab_file: Optional[Path] = None
    vocab_lines: Optional[int] = None
    source: Any = None  # weights.ModelSource of the starting weights (a directory here, random_init false)
    dir_config: Optional[Dict[str, Any]] = None  # the directory's own config (defaults filled), before model.*


def effective_model_shape(spec: JobSpec) -> Tuple[ModelShape, List[Tuple[str, str]]]:
    """What `ernie_cluster.train.model.model_config` will build, as far as the files here tell.

    A built-in name: its table entry; a local directory that exists: its config file plus defaults (with
    random_init false the directory must also hold weights: `weights.resolve_model_dir`); a directory that
    does not exist here: only the spec's overrides are known. Returns (shape, problems).
    """
    from .weights import WeightsError, model_dir_config, resolve_model_dir

    m, problems = spec.model, []
    name = m.model_name_or_path
    config: Dict[str, Any] = {}
    origin: Dict[str, str] = {}
    model_dir: Optional[Path] = None
    source = None
    dir_config = None
    model_path = local_model_path(name)
    if _looks_builtin(name):
        config = dict(BUILTIN_CONFIGS[name])
        origin = {k: "model.model_name_or_path" for k in config}
    elif model_path is not None:
        model_dir = model_path if model_path.is_dir() else model_path.parent
        try:
            if m.random_init:
                raw, _ = model_dir_config(model_path)
            else:
                source = resolve_model_dir(model_path, check=False)
                raw = source.config
            config = {**_ERNIE_CONFIG_DEFAULTS, **_TRAINER_DEFAULTS, **raw}
            dir_config = dict(config)
            origin = {k: "model.model_name_or_path" for k in config}
        except WeightsError as exc:
            problems.append(("model.model_name_or_path", str(exc)))
    vocab_file = None
    if spec.data.vocab_file is not None:
        vocab_file = _abs(spec.data.vocab_file)
    elif model_dir is not None and (model_dir / "vocab.txt").is_file():
        vocab_file = model_dir / "vocab.txt"
    vocab_lines = None
    if vocab_file is not None and vocab_file.is_file():
        try:
            vocab_lines = count_vocab_lines(vocab_file)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(("data.vocab_file", f"cannot read {vocab_file}: {exc}; the trainer reads it as UTF-8 text"))
    if m.vocab_size is None and _looks_builtin(name) and vocab_lines is not None:
        config["vocab_size"] = padded_vocab_size(vocab_lines)
        origin["vocab_size"] = "data.vocab_file"
    for key in MODEL_SIZE_KEYS:
        if getattr(m, key) is not None:
            config[key] = getattr(m, key)
            origin[key] = f"model.{key}"
    return ModelShape(config, origin, vocab_file, vocab_lines, source, dir_config), problems


def model_shape_problems(spec: JobSpec, *, read_weights: bool = True) -> List[Tuple[str, str]]:
    """What Paddle or the trainer would refuse when building this model or loading its starting weights, as
    (field, message with the fix). `read_weights`: also read the tensor shapes of a model directory here."""
    shape, problems = effective_model_shape(spec)
    problems += _config_problems(spec, shape)
    problems += starting_weights_problems(spec, shape, read_weights=read_weights)
    return problems


def _config_problems(spec: JobSpec, shape: ModelShape) -> List[Tuple[str, str]]:
    problems: List[Tuple[str, str]] = []
    cfg, origin = shape.config, shape.origin

    def where(key: str) -> str:
        src = origin.get(key, "")
        if src.startswith("model.") and src != "model.model_name_or_path":
            return src
        if src == "data.vocab_file":
            return f"{shape.vocab_file} padded to a multiple of 8"
        return f"{spec.model.model_name_or_path}'s config"

    sizes_ok = True
    for key in MODEL_SIZE_KEYS:
        if key not in cfg:
            continue
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            sizes_ok = False
            problems.append((origin.get(key, "model.model_name_or_path"),
                             f"{key} is {value!r} in {where(key)}; it must be a positive whole number: "
                             f"set model.{key} to one"))
    if not sizes_ok:
        return problems
    hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    if hidden is not None and heads is not None and hidden % heads:
        field = next((f"model.{k}" for k in ("num_attention_heads", "hidden_size")
                      if origin.get(k) == f"model.{k}"), "model.model_name_or_path")
        divisors = sorted(sorted((d for d in range(1, hidden + 1) if hidden % d == 0), key=lambda d: abs(d - heads))[:3])
        problems.append((field, f"hidden_size {hidden} ({where('hidden_size')}) is not divisible by num_attention_heads "
                                f"{heads} ({where('num_attention_heads')}); set model.num_attention_heads to a divisor "
                                f"of {hidden} such as {', '.join(map(str, divisors))}, or change model.hidden_size"))
    max_pos = cfg.get("max_position_embeddings")
    if max_pos is not None and spec.train.max_seq_len > max_pos:
        problems.append(("train.max_seq_len", f"{spec.train.max_seq_len} exceeds max_position_embeddings {max_pos} "
                                              f"({where('max_position_embeddings')}); lower train.max_seq_len to "
                                              f"{max_pos} or less, or raise model.max_position_embeddings"))
    vocab = cfg.get("vocab_size")
    if vocab is not None and shape.vocab_lines is not None and shape.vocab_lines > vocab:
        field = ("model.vocab_size" if origin.get("vocab_size") == "model.vocab_size" else
                 "data.vocab_file" if spec.data.vocab_file is not None else "model.model_name_or_path")
        problems.append((field,
                         f"the vocab file {shape.vocab_file} has {shape.vocab_lines} tokens but vocab_size is {vocab} "
                         f"({where('vocab_size')}); set model.vocab_size to {padded_vocab_size(shape.vocab_lines)} or "
                         f"more, or use the model's own vocab"))
    types = cfg.get("type_vocab_size")
    if types is not None and types < 2 and spec.data.masking.binary_head:
        problems.append((origin.get("type_vocab_size", "model.model_name_or_path"),
                         f"type_vocab_size {types} ({where('type_vocab_size')}) has no token type 1, which the "
                         f"sentence-order samples use for their second segment; set model.type_vocab_size: 2 or "
                         f"data.masking.binary_head: false"))
    act = cfg.get("hidden_act")
    if act is not None and act not in ACTIVATIONS:
        problems.append(("model.model_name_or_path",
                         f"hidden_act {act!r} ({where('hidden_act')}) is not an activation paddle.nn.functional "
                         f"provides; use one of {', '.join(ACTIVATIONS)} in the model's config"))
    pad = cfg.get("pad_token_id")
    if vocab is not None and pad is not None and (not isinstance(pad, int) or not -vocab <= pad < vocab):
        problems.append(("model.model_name_or_path",
                         f"pad_token_id {pad!r} ({where('pad_token_id')}) is outside the vocabulary of {vocab}; "
                         f"paddle's embedding refuses it: fix the model's config or raise model.vocab_size"))
    return problems


def starting_weights_problems(spec: JobSpec, shape: ModelShape, *, read_weights: bool = True) -> List[Tuple[str, str]]:
    """A model directory here that training starts from (random_init false): what the trainer would refuse.

    model.* shape overrides the directory's config contradicts, a MANIFEST.json the files no longer match (sizes),
    tensors missing or of the wrong shape (`read_weights`: read without paddle), and a data.vocab_file whose
    tokens differ from the directory's vocab.txt. Each message names the file.
    """
    from .weights import WeightsError, check_vocab, ernie_pretraining_shapes, shape_problems

    m, src = spec.model, shape.source
    if m.random_init:
        if shape.vocab_file is None and local_model_path(m.model_name_or_path) is not None:
            return [("data.vocab_file", f"no vocab: {m.model_name_or_path} has no vocab.txt; set data.vocab_file")]
        return []
    if src is None:
        return []
    problems: List[Tuple[str, str]] = []
    dir_config = shape.dir_config or {}
    for key in MODEL_SIZE_KEYS:
        value = getattr(m, key)
        if value is not None and key in dir_config and dir_config[key] != value:
            problems.append((f"model.{key}", f"{value} differs from {key} {dir_config[key]!r} in {src.config_origin}: "
                                             f"the starting weights would not fit; drop model.{key} (or set "
                                             f"model.random_init: true to train this architecture from random weights)"))
    if problems:
        return problems  # the shapes below would only repeat them
    if src.manifest_file is not None:
        from .pretrained import ManifestError, verify_manifest

        try:
            verify_manifest(src.path, full=False)  # sizes here; the trainer checks every sha256
        except ManifestError as exc:
            problems.append(("model.model_name_or_path", str(exc)))
    if read_weights:
        try:
            found = shape_problems(src, ernie_pretraining_shapes(shape.config), allow_missing_heads=m.allow_missing_heads)
        except WeightsError as exc:
            found = [str(exc)]
        problems += [("model.model_name_or_path", f"starting weights {src.path} ({src.layout}) refused: {p}")
                     for p in found]
    vocab = _abs(spec.data.vocab_file) if spec.data.vocab_file is not None else None
    vocab_size = shape.config.get("vocab_size")
    too_big = shape.vocab_lines is not None and isinstance(vocab_size, int) and shape.vocab_lines > vocab_size
    if (vocab is None or vocab.is_file()) and not too_big:  # a missing file or an oversized vocab: reported elsewhere
        try:
            check_vocab(src, vocab)
        except WeightsError as exc:
            problems.append(("data.vocab_file", str(exc)))
    return problems


def corpus_vocab_problems(spec: JobSpec) -> List[Tuple[str, str]]:
    """A tokenized corpus here that recorded its vocab (``vocab_sha256`` in ``_idx.npz``) must match the run's vocab."""
    from .weights import WeightsError, check_vocab

    shape, _ = effective_model_shape(spec)
    vocab = shape.vocab_file
    prefix = _abs(spec.data.input_prefix)
    if vocab is None or not vocab.is_file() or not (prefix.is_dir() or Path(f"{prefix}_idx.npz").is_file()):
        return []
    try:
        check_vocab(None, vocab, corpus_prefix=prefix)
    except WeightsError as exc:
        return [("data.input_prefix", str(exc))]
    return []


# ---------------------------------------------------------------------------
# Loading with line numbers, overrides and readable errors
# ---------------------------------------------------------------------------


@dataclass
class SpecProblem:
    path: str
    message: str
    line: Optional[int] = None

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return _printable(f"{where}: {self.path or '<top>'}: {self.message}")


def _printable(text: str) -> str:
    return _CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], text)


class SpecError(Exception):
    """Raised with every problem found in a spec; the CLI prints them and exits 2."""

    def __init__(self, source: str, problems: List[SpecProblem]):
        self.source = source
        self.problems = problems
        super().__init__(self.report())

    def report(self) -> str:
        lines = [f"invalid job spec {self.source} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        lines += ["  " + p.render(self.source) for p in self.problems]
        return "\n".join(lines)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records the line of each mapping key as a dotted path."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
    mapping: Dict[Any, Any] = {}
    seen = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
        mapping[key] = loader.construct_object(value_node, deep=True)
        loader.key_lines[id(mapping), key] = key_node.start_mark.line + 1
    return mapping


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode, deep: bool = False) -> List[Any]:
    items = [loader.construct_object(child, deep=True) for child in node.value]
    for i, child in enumerate(node.value):
        loader.key_lines[id(items), i] = child.start_mark.line + 1
    return items


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
# YAML 1.1 number rules bite job specs: `24:00:00` is read as the base-60 integer 86400 and `1e-4`
# as a string. Times stay strings and exponents are floats here.
_LineLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+|0o?[0-7_]+)$"), list("-+0123456789"))
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _load_scalar(text: str) -> Any:
    loader = _LineLoader(text)
    loader.key_lines = {}
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _parse_yaml(text: str, source: str) -> Tuple[Any, Dict[str, int]]:
    loader = _LineLoader(text)
    loader.key_lines = {}
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise SpecError(source, [SpecProblem("", f"not valid YAML: {getattr(exc, 'problem', None) or exc}", line)]) from None
    finally:
        loader.dispose()
    lines: Dict[str, int] = {}

    def walk(obj: Any, prefix: str) -> None:
        if isinstance(obj, (dict, list)):
            for k, v in obj.items() if isinstance(obj, dict) else enumerate(obj):
                path = f"{prefix}[{k}]" if isinstance(obj, list) else f"{prefix}.{k}" if prefix else str(k)
                line = loader.key_lines.get((id(obj), k))
                if line:
                    lines[path] = line
                walk(v, path)

    walk(data, "")
    return data, lines


def parse_override(text: str) -> Tuple[List[str], Any]:
    """`train.max_steps=1000` -> (['train', 'max_steps'], 1000); the value is a YAML scalar."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ValueError(f"override key {key!r} must be dotted names such as train.max_steps")
    try:
        value = _load_scalar(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: Dict[str, Any], overrides: List[str]) -> List[SpecProblem]:
    problems: List[SpecProblem] = []
    for text in overrides:
        try:
            parts, value = parse_override(text)
        except ValueError as exc:
            problems.append(SpecProblem("", str(exc)))
            continue
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(SpecProblem(".".join(parts[: i + 1]), f"override {text!r} goes inside a value that is not a section"))
                break
            node = child
        else:
            node[parts[-1]] = value
    return problems


def _model_for(path: Tuple[Any, ...]) -> Optional[type]:
    model: Any = JobSpec
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _problem_from_pydantic(err: Dict[str, Any], lines: Dict[str, int]) -> SpecProblem:
    loc = tuple(err.get("loc", ()))
    path = ".".join(str(p) for p in loc)
    kind = err.get("type", "")
    if kind == "control_character":  # the message says it all; the path names the dict entry or list item
        path += err["ctx"]["entry"]
        return SpecProblem(path, err["ctx"]["message"], _line_for(path, lines))
    if kind == "extra_forbidden":
        parent = _model_for(loc[:-1])
        choices = sorted(parent.model_fields) if parent is not None else []
        guess = difflib.get_close_matches(str(loc[-1]), choices, n=1, cutoff=0.6)
        hint = f"did you mean '{guess[0]}'? " if guess else ""
        msg = f"unknown key; {hint}valid keys here: {', '.join(choices)}"
    elif kind == "missing":
        msg = "required; add it"
    elif kind == "literal_error":
        msg = f"{err.get('input')!r} is not allowed; choose one of: {err['ctx']['expected']}"
    else:
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if "input" in err and kind not in ("model_type", "dict_type") and not isinstance(err["input"], dict):
            msg += f" (got {err['input']!r})"
    return SpecProblem(path, msg, _line_for(path, lines))


def load_spec(path: str | Path, overrides: Optional[List[str]] = None, *, check_paths: bool = True,
              path_warnings: Optional[List[SpecProblem]] = None) -> JobSpec:
    """Read, override and validate a spec; raise SpecError listing every problem.

    With `path_warnings` (a list), missing data/model paths are appended there instead of refusing the spec:
    `render` shows what would be submitted from any machine.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(source, [SpecProblem("", "file not found; pass the path of a job spec such as jobs/ernie_tiny_local.yaml")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(source, [SpecProblem("", f"cannot read: {exc}")]) from None
    return validate_text(text, source, overrides or [], check_paths=check_paths, path_warnings=path_warnings)


def validate_text(text: str, source: str, overrides: List[str], *, check_paths: bool = True,
                  path_warnings: Optional[List[SpecProblem]] = None) -> JobSpec:
    """Validate spec text; relative paths are resolved against the current directory and frozen."""
    data, lines = _parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(source, [SpecProblem("", "the top level must be a mapping of sections (name, cluster, resources, data, model, train, convert)", 1)])
    problems = apply_overrides(data, overrides)
    spec: Optional[JobSpec] = None
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        problems += [_problem_from_pydantic(e, lines) for e in exc.errors()]
    if spec is not None:
        problems += [SpecProblem(p, m, _line_for(p, lines)) for p, m in spec.cross_field_errors()]
        # Files that exist here are read (vocab, a model directory's config); missing ones are path problems.
        problems += [SpecProblem(p, m, _line_for(p, lines))
                     for p, m in model_shape_problems(spec, read_weights=check_paths)]
        if check_paths:
            found = _path_problems(spec, lines)
            if path_warnings is not None:
                path_warnings.extend(found)
            else:
                problems += found
            # the corpus exists here, so a vocab mismatch is wrong everywhere (not a warning under render)
            problems += [SpecProblem(p, m, _line_for(p, lines)) for p, m in corpus_vocab_problems(spec)]
    if problems:
        raise SpecError(source, problems)
    assert spec is not None
    resolved = _resolve_paths(spec)
    # Resolving joins the current directory, which may hold a character the spec may not; validate the frozen form.
    try:
        JobSpec.model_validate(resolved.model_dump())
    except ValidationError as exc:
        raise SpecError(source, [_problem_from_pydantic(e, lines) for e in exc.errors()]) from None
    return resolved


def _line_for(path: str, lines: Dict[str, int]) -> Optional[int]:
    """The line of `path`, else of the nearest enclosing key ('environment.setup[1]' -> 'environment.setup')."""
    while path:
        if path in lines:
            return lines[path]
        path = re.sub(r"(?:\.[^.\[]*|\[\d+\])$", "", path) if re.search(r"[.\[]", path) else ""
    return None


def _abs(value: str) -> Path:
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = Path.cwd() / p
    return p


def _path_problems(spec: JobSpec, lines: Dict[str, int]) -> List[SpecProblem]:
    problems = []
    d = spec.data
    prefix = _abs(d.input_prefix)
    has_ids = Path(f"{prefix}_ids.npy").exists() and Path(f"{prefix}_idx.npz").exists()
    if prefix.is_dir():  # a directory of corpora: every <name>_ids.npy + <name>_idx.npz pair in it
        pairs = [f for f in prefix.glob("*_idx.npz") if Path(str(f)[: -len("_idx.npz")] + "_ids.npy").exists()]
        if d.raw_corpus is not None:
            problems.append(SpecProblem("data.raw_corpus", "data.input_prefix is a directory of tokenized corpora; "
                                        "tokenize raw text into a file prefix instead (or drop data.raw_corpus)",
                                        _line_for("data.raw_corpus", lines)))
        elif not pairs:
            problems.append(SpecProblem("data.input_prefix", f"{prefix} is a directory without any <name>_ids.npy + "
                                        f"<name>_idx.npz pair; point it at a corpus prefix or a directory of them",
                                        _line_for("data.input_prefix", lines)))
        has_ids = True
    if d.raw_corpus is not None and not prefix.is_dir():
        if not _abs(d.raw_corpus).exists():
            problems.append(SpecProblem("data.raw_corpus", f"{d.raw_corpus} does not exist; fix the path (relative paths are from the current directory)", _line_for("data.raw_corpus", lines)))
    elif not has_ids:
        problems.append(SpecProblem("data.input_prefix", f"{prefix}_ids.npy / _idx.npz not found; run data_tools.create_pretraining_data or set data.raw_corpus", _line_for("data.input_prefix", lines)))
    if d.vocab_file is not None and not _abs(d.vocab_file).is_file():
        what = "is not a file" if _abs(d.vocab_file).exists() else "does not exist"
        problems.append(SpecProblem("data.vocab_file", f"{d.vocab_file} {what}; fix the path (relative paths are from "
                                    f"the current directory)", _line_for("data.vocab_file", lines)))
    name = spec.model.model_name_or_path
    if not _looks_builtin(name):
        if local_model_path(name) is None:
            problems.append(SpecProblem(
                "model.model_name_or_path",
                f"{name!r} is neither a built-in config ({', '.join(BUILTIN_MODELS)}) nor a local directory; give the "
                f"model directory training starts from (for the released ERNIE 1.0: `python -m ernie_cluster "
                f"pretrained ernie-1.0-base-zh --out DIR`, copied here)", _line_for("model.model_name_or_path", lines)))
    elif d.vocab_file is None:
        problems.append(SpecProblem("data.vocab_file", f"built-in model {name!r} needs a local vocab file (nothing is downloaded)", _line_for("data", lines)))
    return problems


def _resolve_paths(spec: JobSpec) -> JobSpec:
    """Freeze relative paths against the submitting directory, so compute nodes see the same files."""
    updates: Dict[str, Any] = {"output_dir": str(_abs(spec.output_dir))}
    data_updates = {"input_prefix": str(_abs(spec.data.input_prefix))}
    for key in ("raw_corpus", "vocab_file"):
        value = getattr(spec.data, key)
        if value is not None:
            data_updates[key] = str(_abs(value))
    updates["data"] = spec.data.model_copy(update=data_updates)
    if not _looks_builtin(spec.model.model_name_or_path):
        updates["model"] = spec.model.model_copy(update={"model_name_or_path": str(_abs(spec.model.model_name_or_path))})
    if spec.convert.output_dir:
        updates["convert"] = spec.convert.model_copy(update={"output_dir": str(_abs(spec.convert.output_dir))})
    return spec.model_copy(update=updates)


def load_frozen(path: str | Path) -> JobSpec:
    """Load a spec frozen into a run directory (already validated and resolved)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get("data"), dict):
        # frozen before data.shuffle_documents existed: that run's splits are contiguous
        data["data"].setdefault("shuffle_documents", False)
    if isinstance(data, dict) and isinstance(data.get("model"), dict) and "random_init" not in data["model"]:
        # frozen before model.random_init existed: a built-in name meant random weights then
        name = data["model"].get("model_name_or_path", ModelSection.model_fields["model_name_or_path"].default)
        if _looks_builtin(str(name)):
            data["model"]["random_init"] = True
    return JobSpec.model_validate(data)
