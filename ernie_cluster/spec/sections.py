"""The spec's sections as pydantic models: each field with its default, bounds and description, and the checks
that need that field alone. `JobSpec` (spec/job.py) puts them together and checks fields against each other."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationInfo, field_validator,
                      model_serializer)
from pydantic_core import PydanticCustomError

from ..envvars import PADDLE_LAUNCH_OVERRIDES, is_secret
from ..slurm import slurm_time_to_seconds
from .problems import control_character_message

_MEM = re.compile(r"^\d+[KMGT]?$")


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


class Section(BaseModel):
    """Every section (and JobSpec): unknown keys are refused, defaults validated, control characters refused."""

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


class RequeuePolicy(Section):
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
        3, ge=0, le=100, description="requeues after a failure that may be transient (paddle's launcher died, a "
                                     "trainer killed or crashed, a hang, a dead node, a node that failed its "
                                     "pre-flight); never after a non-finite loss or a setup error")
    max_excluded_nodes: int = Field(
        4, ge=0, le=1000, description="nodes ernie_cluster may leave out of the requeued job (ExcNodeList) after a "
                                      "hang, a crash, a dead node or a failed pre-flight on them; 0: none. Never so "
                                      "many that the partition has fewer usable nodes than the job needs")


class WatchdogSection(Section):
    """Hang detection (`ernie_cluster.launch.watchdog`): how long a trainer may go without a heartbeat in each
    phase before its attempt ends as `hung`, and when a slow rank is reported as a straggler. The defaults suit
    ERNIE 1.0 base on V100s (0.5-1 s steps, a 1.3 GB checkpoint); a false "hung" costs a restart."""

    enabled: bool = Field(True, description="end an attempt with a hung rank; false: only log it")
    startup_s: float = Field(1800.0, gt=0, description="start-up: imports, rendezvous, resume")
    data_s: float = Field(3600.0, gt=0, description="opening the datasets (rank 0 builds the sample index)")
    evaluation_s: float = Field(1800.0, gt=0, description="one evaluation (the final test split is 10x eval_iters)")
    checkpoint_s: float = Field(1800.0, gt=0, description="one checkpoint or snapshot write")
    step_s_min: float = Field(300.0, gt=0, description="training: the learned limit is never tighter than this")
    step_factor: float = Field(20.0, ge=2, description="training: this many median step times")
    warmup_s: float = Field(900.0, gt=0, description="training before 5 steps were measured")
    straggler_skew: float = Field(1.5, gt=1, description="a rank whose median busy time per step is this many "
                                                           "times the fastest rank's is a straggler")
    straggler_floor_s: float = Field(0.1, gt=0, description="... and at least this many seconds more")


# sbatch options ernie_cluster sets itself: cluster.extra_sbatch may not, and the message names the field to use.
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


class ClusterSection(Section):
    backend: Literal["slurm", "local"] = "slurm"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: str = "24:00:00"
    constraint: Optional[str] = None
    exclusive: bool = False
    extra_sbatch: Dict[str, str] = Field(default_factory=dict, description="more sbatch options: {option: value}")
    requeue: RequeuePolicy = Field(default_factory=RequeuePolicy)
    watchdog: WatchdogSection = Field(default_factory=WatchdogSection)
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


MAX_NODES = 4096
_NODE_RANGE = re.compile(r"([0-9]+)-([0-9]+)")


class ResourcesSection(Section):
    nodes: Union[int, str] = Field(
        1, description="nodes per attempt: a count, or a range 'MIN-MAX' (elastic: each attempt runs on the nodes "
                       "Slurm can give within it, with the same global batch)")
    gpus_per_node: int = Field(0, ge=0, le=16)
    procs_per_node: Optional[int] = Field(
        None, ge=1, le=128, description="trainer processes per node; default: gpus_per_node, or 1 on CPU"
    )
    cpus_per_task: int = Field(1, ge=1, le=512)
    mem: Optional[str] = None

    @field_validator("nodes", mode="before")
    @classmethod
    def _check_nodes(cls, v: Any) -> Union[int, str]:
        """A count stays an int; a range becomes 'MIN-MAX' (a range of one count: that count)."""
        usage = f"use a count of nodes (1-{MAX_NODES}) or a range such as '2-4' (elastic)"
        # this runs before Section's own check: the same message for a control character
        message = control_character_message(v) if isinstance(v, str) else None
        if message:
            raise PydanticCustomError("control_character", "{message}", {"message": message, "entry": ""})
        text = str(v) if isinstance(v, (int, str)) and not isinstance(v, bool) else None
        if text is None:
            raise ValueError(f"{v!r} is not a number of nodes; {usage}")
        if re.fullmatch(r"[0-9]+", text):
            low = high = int(text)
        else:
            match = _NODE_RANGE.fullmatch(text)
            if match is None:
                raise ValueError(f"{text!r} is not a number of nodes or a range of them; {usage}")
            low, high = int(match.group(1)), int(match.group(2))
        if low > high:
            raise ValueError(f"{text!r}: the minimum is above the maximum; write the range as '{high}-{low}'")
        if not 1 <= low <= high <= MAX_NODES:
            raise ValueError(f"{text} is outside 1-{MAX_NODES}; {usage}")
        return low if low == high else f"{low}-{high}"

    @property
    def min_nodes(self) -> int:
        return int(str(self.nodes).split("-")[0])

    @property
    def max_nodes(self) -> int:
        return int(str(self.nodes).split("-")[-1])

    @property
    def elastic(self) -> bool:
        return self.min_nodes != self.max_nodes

    @property
    def node_counts(self) -> range:
        return range(self.min_nodes, self.max_nodes + 1)

    @property
    def nodes_text(self) -> str:
        return str(self.nodes)

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
        """The world at the most nodes (an elastic attempt's own: `JobSpec.batch_plan`)."""
        return self.max_nodes * self.trainers_per_node


# A path bound into a container: apptainer splits --bind at ',' and ':', pyxis splits --container-mounts at ','
# and ':' and writes each entry into enroot's mount script as `echo "SRC DST FLAGS"` (spaces separate the fields,
# `$`, backquotes and quotes would be read by that shell), so only these characters are taken.
BIND_PATH = re.compile(r"/[\w.+@~/-]*")
BIND_PATH_RULE = ("an absolute path of letters, digits and . _ + @ ~ - / only (container runtimes split bind lists "
                  "at ',' and ':', and pyxis hands each mount to enroot's mount table, where spaces separate fields)")
CONTAINER_RUNTIMES = ("apptainer", "singularity", "pyxis")


class ContainerSection(Section):
    """Run the node launchers and the conversion inside a container image (`ernie_cluster/container.py`)."""

    runtime: Literal["apptainer", "singularity", "pyxis"] = Field(
        ..., description="apptainer (or singularity): `apptainer exec` in the srun line; pyxis: srun's --container-* "
                         "options (enroot)")
    image: str = Field(..., description="apptainer: a .sif file or sandbox directory, or docker:// / oras:// / "
                                        "library://...; pyxis: an enroot URI (nvcr.io#nvidia/paddle:TAG) or a "
                                        "squashfs file")
    binds: List[str] = Field(default_factory=list, description="more SRC[:DST[:ro|rw]] bind mounts, beside the run's "
                                                               "own directories")
    nv: Optional[bool] = Field(None, description="apptainer --nv (the node's NVIDIA GPUs); default: when "
                                                  "resources.gpus_per_node > 0")

    @field_validator("image")
    @classmethod
    def _check_image(cls, v: str, info: ValidationInfo) -> str:
        if not v.strip():
            raise ValueError("is empty; name the image (a .sif file, docker://..., nvcr.io#nvidia/paddle:TAG)")
        if v.startswith("-"):
            raise ValueError(f"{v!r} starts with '-', which the runtime would read as an option; name the image")
        if info.data.get("runtime") == "pyxis" and re.search(r"\s", v):
            raise ValueError(f"{v!r} contains whitespace, which no enroot URI or squashfs path for pyxis may hold")
        return v

    @field_validator("binds")
    @classmethod
    def _check_binds(cls, v: List[str]) -> List[str]:
        for item in v:
            parts = item.split(":")
            if len(parts) > 3 or not all(BIND_PATH.fullmatch(p) for p in parts[:2]):
                raise ValueError(f"{item!r} must be SRC[:DST[:ro|rw]], SRC and DST each {BIND_PATH_RULE}")
            if len(parts) == 3 and parts[2] not in ("ro", "rw"):
                raise ValueError(f"{item!r}: the options after the second ':' must be 'ro' or 'rw'")
            if parts[0].rstrip("/") == "":
                raise ValueError(f"{item!r} would bind the whole file system; bind the directories the run needs")
        return v

    @field_validator("nv")
    @classmethod
    def _check_nv(cls, v: Optional[bool], info: ValidationInfo) -> Optional[bool]:
        if v is not None and info.data.get("runtime") == "pyxis":
            raise ValueError("is apptainer's --nv; pyxis gives the container the job's GPUs itself (enroot's nvidia "
                             "hook): remove nv")
        return v


class EnvironmentSection(Section):
    setup: List[str] = Field(default_factory=list, description="shell lines run before training, e.g. 'module load cuda'")
    env: Dict[str, str] = Field(default_factory=dict)
    python: Optional[str] = Field(None, description="interpreter on the compute nodes; default: the one running "
                                                    "submit, or `python3` inside environment.container")
    container: Optional[ContainerSection] = Field(None, description="run the jobs inside a container image")

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

    # No `container: null` in a frozen spec: specs (and their hashes) without a container read as before it existed.
    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> Dict[str, Any]:
        data = handler(self)
        if self.container is None:
            data.pop("container", None)
        return data


class MaskingSection(Section):
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


class DataSection(Section):
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


class ModelSection(Section):
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


class TrainSection(Section):
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
    async_checkpoint: Literal["auto", "true", "false"] = Field(
        "auto", description="periodic checkpoints written in the background from a host copy; auto: synchronous "
                            "when host memory cannot hold the copy; true: refuse to start then")
    keep_checkpoints: int = Field(2, ge=2, le=100, description="complete checkpoints kept; the newest two at least")
    logging_freq: int = Field(20, ge=1)
    eval_freq: int = Field(1000, ge=1)
    eval_iters: int = Field(10, ge=0)
    seed: int = Field(1234, ge=0, le=2**31 - 1)
    num_workers: int = Field(2, ge=0, le=64)

    @field_validator("async_checkpoint", mode="before")
    @classmethod
    def _async_checkpoint_bool(cls, v: Any) -> Any:
        return str(v).lower() if isinstance(v, bool) else v  # YAML reads `true`/`false` as booleans

    @property
    def resolved_engine(self) -> str:
        """Static Fleet on GPUs; dynamic data-parallel on the CPU, where static collectives do not exist."""
        if self.engine != "auto":
            return self.engine
        return "static" if self.device == "gpu" else "dynamic"


class ConvertSection(Section):
    enabled: bool = True
    output_dir: Optional[str] = Field(None, description="default: <output_dir>/converted")
    verify: bool = Field(True, description="run one batch through static and converted models and compare")
    tolerance: float = Field(1e-4, gt=0)
