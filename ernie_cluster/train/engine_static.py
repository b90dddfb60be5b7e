"""The static-graph Fleet engine (the reference's path; GPUs, or a single CPU process).

The program is built once, under `paddle.utils.unique_name.guard()`, from paddlenlp's
`ErnieForPretraining`. While building, the Layer's `state_dict()` gives every structured
parameter name its generated variable name (`ernie.encoder.layers.0.self_attn.q_proj.weight
-> linear_0.w_0`); that map is the only place generated names are used: checkpoints,
initial weights and conversion all speak structured names.

Fleet strategy as in the reference `run_pretrain_static.py` (A.3): gradient merge with
`k_steps = accumulate_steps`, AMP fp16 with the reference's white/black lists and dynamic
loss scaling from `train.amp_init_loss_scaling`, recompute on the encoder layer outputs, and
the reference's ExecutionStrategy/BuildStrategy settings.

Recompute and dropout: Fleet's recompute pass gives every dropout a `seed` op so the
recomputed forward draws the forward's mask, but that op's seed comes from
std::random_device, so a step is not reproducible. Before `minimize` this engine gives each
dropout its own `seed` op in deterministic mode reading a named generator, re-seeded at every
step from (seed, rank, step, dropout index); the pass then keeps those seed ops.

Across processes, static collectives need GPUs (NCCL). The stop flag and barriers then use
a tiny separate program holding one `c_allreduce_max` on ring 0 (GPU only).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .engine_common import (ACC_KINDS, ACC_RE, LOSS_SCALING_KEYS, Collective, HostViews, StepResult, dropout_seed,
                            empty_optimizer_state, get_accumulator, gpu_device_id, mean_results, put_accumulator,
                            step_seed)
from .model import FEED_SPECS, canonical_names, create_model, forward_losses, no_decay

log = logging.getLogger("ernie_cluster.train")


def _lr_scheduler_class():
    import paddle

    class StepLR(paddle.optimizer.lr.LRScheduler):
        """Paddle-facing wrapper: the value is `schedule.for_update(completed_steps)`; the loop sets the step."""

        def __init__(self, schedule):
            self.schedule = schedule
            super().__init__(learning_rate=schedule.max_lr, last_epoch=-1)

        def get_lr(self):
            return self.schedule.for_update(max(0, self.last_epoch))

        def set_completed_steps(self, completed: int) -> None:
            self.last_epoch = int(completed)
            self.last_lr = self.get_lr()

    return StepLR


def make_lr_scheduler(schedule):
    return _lr_scheduler_class()(schedule)


def fleet_strategy(spec, recompute_checkpoints: List[str], accumulate_steps: int):
    import paddle
    from paddle.distributed import fleet

    t = spec.train
    strategy = fleet.DistributedStrategy()
    exec_strategy = paddle.static.ExecutionStrategy()
    exec_strategy.num_threads = 1
    exec_strategy.num_iteration_per_drop_scope = 10000
    build_strategy = paddle.static.BuildStrategy()
    build_strategy.fuse_broadcast_ops = True
    build_strategy.enable_inplace = True
    build_strategy.enable_addto = bool(t.enable_addto and t.device == "gpu")
    strategy.execution_strategy = exec_strategy
    strategy.build_strategy = build_strategy
    strategy.nccl_comm_num = 3
    strategy.fuse_grad_size_in_MB = 16
    if t.use_recompute:
        strategy.recompute = True
        strategy.recompute_configs = {"checkpoints": list(recompute_checkpoints)}
    if t.use_amp:
        strategy.amp = True
        strategy.amp_configs = {
            "custom_white_list": ["softmax", "layer_norm", "gelu"],
            "custom_black_list": ["c_softmax_with_cross_entropy"],
            "init_loss_scaling": float(t.amp_init_loss_scaling),
            "use_dynamic_loss_scaling": True,
        }
    acc = accumulate_steps  # the attempt's (batch plan): the program is built for the nodes it got
    if acc > 1:
        strategy.gradient_merge = True
        strategy.gradient_merge_configs = {"k_steps": acc, "avg": True}
    return strategy


DROPOUT_RNG_PREFIX = "ernie_cluster_dropout_"


def named_generator(name: str):
    """Paddle's named seed generator `name` (what a deterministic `seed` op reads), created on first use."""
    from paddle.base import core

    try:
        return core.get_random_seed_generator(name)
    except RuntimeError:  # not registered yet
        return core.set_random_seed_generator(name, 0)


def seed_dropout_ops(block, rng_prefix: str = DROPOUT_RNG_PREFIX) -> List[str]:
    """Give every dropout in `block` without one a Seed input from a deterministic `seed` op.

    One named generator per dropout, so the values do not depend on the order in which the
    executor runs these independent ops. Returns the generator names in program order.
    """
    from paddle.base import core, unique_name

    device_attr = core.op_proto_and_checker_maker.kOpDeviceAttrName()
    names: List[str] = []
    idx = 0
    while idx < len(block.ops):
        op = block.ops[idx]
        if op.type != "dropout" or op.input("Seed"):
            idx += 1
            continue
        rng = f"{rng_prefix}{len(names)}"
        named_generator(rng)
        var = block.create_var(name=unique_name.generate("ernie_cluster_dropout_seed"), shape=[1], dtype="int32",
                               type=core.VarDesc.VarType.LOD_TENSOR, persistable=False, stop_gradient=True)
        attrs = {"seed": 0, "deterministic": True, "rng_name": rng, "force_cpu": True}
        if op.desc.has_attr(device_attr):
            attrs[device_attr] = op.desc.attr(device_attr)
        block._insert_op(idx, type="seed", inputs={}, outputs={"Out": [var]}, attrs=attrs)
        op.desc.set_input("Seed", [var.name])
        names.append(rng)
        idx += 2
    block._sync_with_cpp()
    return names


def feed_shape(name: str, seq_len: int) -> List[int]:
    """The static program's shape of feed `name` (batch dimension -1)."""
    return {
        "input_ids": [-1, seq_len], "token_type_ids": [-1, seq_len], "position_ids": [-1, seq_len],
        "attention_mask": [-1, 1, 1, seq_len], "masked_positions": [-1], "masked_lm_labels": [-1, 1],
        "masked_lm_weights": [-1], "next_sentence_labels": [-1, 1],
    }[name]


class StaticCollective(Collective):
    """Stop-flag agreement, barriers and eval sums for static multi-GPU runs: all-reduces on ring 0."""

    def __init__(self, engine: "StaticEngine"):
        self.engine = engine
        self._programs: Dict[tuple, tuple] = {}  # (op, shape, dtype) -> (program, output var)

    def _all_reduce(self, values: np.ndarray, op: str) -> np.ndarray:
        import paddle

        key = (op, values.shape, str(values.dtype))
        if key not in self._programs:
            prog, startup = paddle.static.Program(), paddle.static.Program()
            with paddle.utils.unique_name.guard(f"ernie_cluster_{op.lower()}_"), \
                    paddle.static.program_guard(prog, startup):
                x = paddle.static.data("ernie_cluster_in", list(values.shape), str(values.dtype))
                y = paddle.scale(x, scale=1.0)
                paddle.distributed.all_reduce(y, op=getattr(paddle.distributed.ReduceOp, op))
            self._programs[key] = (prog, y)
        prog, y = self._programs[key]
        (out,) = self.engine.exe.run(prog, feed={"ernie_cluster_in": values}, fetch_list=[y], use_program_cache=True)
        return np.asarray(out).reshape(-1)

    def max_int(self, value: int) -> int:
        if self.engine.dist.world_size == 1:
            return int(value)
        return int(self._all_reduce(np.array([int(value)], dtype="int64"), "MAX")[0])

    def barrier(self) -> None:
        if self.engine.dist.world_size > 1:
            self.max_int(0)

    def sum_floats(self, values: List[float]) -> List[float]:
        if self.engine.dist.world_size == 1:
            return [float(v) for v in values]
        return [float(v) for v in self._all_reduce(np.asarray(values, dtype="float64"), "SUM")]


class StaticEngine:
    name = "static"

    def __init__(self, spec, dist, config: Dict[str, Any], schedule, plan=None):
        import paddle
        from paddle.distributed import fleet

        self.spec = spec
        self.dist = dist
        self.config = config
        self.schedule = schedule
        self.binary_head = bool(spec.data.masking.binary_head)
        # the attempt's accumulation: an elastic attempt's follows its nodes (spec.batch_plan)
        self.plan = plan if plan is not None else spec.batch_plan(world_size=dist.world_size)
        self.micro_per_step = self.plan.accumulate_steps
        t = spec.train
        paddle.enable_static()
        self.place = paddle.CUDAPlace(gpu_device_id(dist)) if t.device == "gpu" else paddle.CPUPlace()
        fleet.init(is_collective=True)
        paddle.seed(t.seed)  # identical initialisation on every rank
        self.main = paddle.static.Program()
        self.startup = paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(self.main, self.startup):
            checkpoints = self._build_forward()
            self._build_optimizer(checkpoints)
        if t.use_recompute:
            log.info("recompute: %d checkpoints (encoder layer outputs); %d dropouts seeded per (seed, rank, step)",
                     len(checkpoints), len(self.dropout_rngs))
        self.feed_names = [n for n, _ in FEED_SPECS]
        self.exe = paddle.static.Executor(self.place)
        self.exe.run(self.startup)
        self.scope = paddle.static.global_scope()
        self._tensors: Dict[str, Any] = {}  # variable name -> its tensor in the scope
        self._host_views = HostViews()
        self._classify_persistables()
        self.collective = StaticCollective(self)
        self.fetch = [self.loss, self.lm_loss, self.sop_loss] + ([self._loss_scaling_var] if self._loss_scaling_var else [])
        self.eval_fetch = [self.loss, self.lm_loss, self.sop_loss]
        self._dump_program()

    # -- program ----------------------------------------------------------------
    def _build_forward(self) -> List[str]:
        """Feeds, model, losses, the eval clone and the seeded dropouts; returns the recompute checkpoints
        (filled while the forward is built)."""
        import paddle

        t = self.spec.train
        feeds = {name: paddle.static.data(name, feed_shape(name, t.max_seq_len), dtype) for name, dtype in FEED_SPECS}
        self.model = create_model(self.config)
        checkpoints: List[str] = []
        if t.use_recompute:
            for layer in self.model.ernie.encoder.layers:
                layer.register_forward_post_hook(lambda _l, _i, out: checkpoints.append(out.name))
        self.loss, self.lm_loss, self.sop_loss, _, _ = forward_losses(self.model, feeds, self.binary_head)
        self.names: Dict[str, str] = {k: v.name for k, v in self.model.state_dict().items()}
        self.eval_program = self.main.clone(for_test=True)
        # After the clone: evaluation keeps its plain (is_test) dropouts.
        self.dropout_rngs = seed_dropout_ops(self.main.global_block()) if t.use_recompute else []
        self.canonical, self.aliases = canonical_names(self.names)
        return checkpoints

    def _build_optimizer(self, recompute_checkpoints: List[str]) -> None:
        """AdamW (no decay on biases and norms) from the LR schedule, under the Fleet strategy; minimize."""
        import paddle
        from paddle.distributed import fleet

        t = self.spec.train
        decay_vars = {self.names[n] for n in self.canonical if not no_decay(n)}
        self.lr = make_lr_scheduler(self.schedule)
        clip = paddle.nn.ClipGradByGlobalNorm(t.grad_clip) if t.grad_clip > 0 else None
        optimizer = paddle.optimizer.AdamW(
            learning_rate=self.lr, beta1=t.adam_beta1, beta2=t.adam_beta2, epsilon=t.adam_epsilon,
            weight_decay=t.weight_decay, apply_decay_param_fun=lambda vname: vname in decay_vars, grad_clip=clip)
        self.strategy = fleet_strategy(self.spec, recompute_checkpoints, self.plan.accumulate_steps)
        optimizer = fleet.distributed_optimizer(optimizer, strategy=self.strategy)
        optimizer.minimize(self.loss)

    # -- persistables ---------------------------------------------------------
    def _classify_persistables(self) -> None:
        param_vars = set(self.names.values())
        by_var = {self.names[n]: n for n in self.canonical}
        self.acc_vars: Dict[tuple, str] = {}  # (canonical name, kind) -> variable name
        self.ls_vars: Dict[str, str] = {}
        self.extra_vars: List[str] = []
        self._loss_scaling_var = None
        from paddle.base.framework import Parameter

        for var in self.main.list_vars():
            if not var.persistable or var.name in param_vars:
                continue
            if isinstance(var, Parameter):
                # e.g. the MLM decoder's own weight, replaced by the tied word embedding: in the
                # program, never used, not in state_dict(); nothing to save.
                continue
            name = var.name
            m = ACC_RE.match(name)
            if m and m.group("param") in by_var:
                self.acc_vars[(by_var[m.group("param")], m.group("kind"))] = name
            elif any(name.startswith(k + "_") for k in LOSS_SCALING_KEYS):
                key = next(k for k in LOSS_SCALING_KEYS if name.startswith(k + "_"))
                self.ls_vars[key] = name  # program variable <key>_<n> -> saved loss_scaling[key]
                if key == "loss_scaling":
                    self._loss_scaling_var = var
            elif name.startswith("learning_rate_") or "GradientMerge" in name or name.startswith("gradient_merge_"):
                continue  # set from the schedule / zero at every step boundary
            elif var.type == paddle_var_type_lod_tensor():
                self.extra_vars.append(name)
        missing = [(n, k) for n in self.canonical for k in ACC_KINDS if (n, k) not in self.acc_vars]
        if missing:
            log.warning("static engine: %d Adam accumulators not found (e.g. %s)", len(missing), missing[:3])

    def _dump_program(self) -> None:
        out = os.environ.get("ERNIE_CLUSTER_DUMP_PROGRAM")
        if out:
            os.makedirs(out, exist_ok=True)
            with open(os.path.join(out, f"main_program.txt.{self.dist.rank}"), "w") as f:
                f.write(str(self.main))

    def _tensor(self, vname: str):
        tensor = self._tensors.get(vname)
        if tensor is None:
            var = self.scope.find_var(vname)
            if var is None:
                raise KeyError(f"variable {vname} is not in the scope")
            tensor = self._tensors[vname] = var.get_tensor()  # the variable's own tensor: it stays valid
        return tensor

    def _get(self, vname: str) -> np.ndarray:
        return np.asarray(self._tensor(vname))  # __array__ already copies (device to host on a GPU): no second copy

    def _set(self, vname: str, value: np.ndarray) -> None:
        tensor = self._tensor(vname)
        current = np.array(tensor)
        value = np.asarray(value)
        if tuple(current.shape) != tuple(value.shape):
            raise ValueError(f"{vname}: checkpoint shape {tuple(value.shape)} != program shape {tuple(current.shape)}")
        tensor.set(value.astype(current.dtype, copy=False), self.place)

    # -- engine interface -------------------------------------------------------
    def param_shapes(self) -> Dict[str, tuple]:
        return {n: tuple(self._get(v).shape) for n, v in self.names.items()}

    def model_state(self) -> Dict[str, np.ndarray]:
        return self._model_state(self._get)

    def _model_state(self, get: Callable[[str], np.ndarray]) -> Dict[str, np.ndarray]:
        arrays = {n: get(self.names[n]) for n in self.canonical}
        out = {}
        for n in self.names:  # state_dict order, aliases included (from_pretrained wants them all)
            out[n] = arrays[self.aliases.get(n, n)]
        return out

    def set_model_state(self, state: Dict[str, np.ndarray], *, strict: bool = True) -> None:
        missing = [n for n in self.canonical if n not in state]
        if strict and missing:
            raise KeyError(f"checkpoint lacks parameters: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        for n in self.canonical:
            if n in state:
                self._set(self.names[n], state[n])

    def optimizer_state(self) -> Dict[str, Any]:
        return self._optimizer_state(self._get)

    def _optimizer_state(self, get: Callable[[str], np.ndarray]) -> Dict[str, Any]:
        out = empty_optimizer_state()
        for (n, kind), vname in self.acc_vars.items():
            put_accumulator(out, n, kind, get(vname))
        if self.ls_vars:
            out["loss_scaling"] = {k: get(v) for k, v in self.ls_vars.items()}
        out["extra"] = {f"static:{v}": get(v) for v in self.extra_vars}
        return out

    def state_views(self) -> Optional[Tuple[Dict[str, np.ndarray], Dict[str, Any]]]:
        """(model_state, optimizer_state) as numpy views of the live variables (`engine_common.HostViews`), valid
        until the next step. None on a GPU, whose state model_state()/optimizer_state() bring to the host."""
        if self.spec.train.device == "gpu":
            return None

        def build(view):
            get = lambda vname: view(vname, lambda: self._tensor(vname))  # noqa: E731
            return self._model_state(get), self._optimizer_state(get)

        return self._host_views.tree(build)

    def set_optimizer_state(self, state: Dict[str, Any]) -> None:
        for (n, kind), vname in self.acc_vars.items():
            self._set(vname, get_accumulator(state, n, kind))
        ls = state.get("loss_scaling")
        if ls and self.ls_vars:
            for k, v in self.ls_vars.items():
                if k in ls:
                    self._set(v, ls[k])
        elif self.ls_vars:
            log.info("checkpoint has no loss-scaling state: starting from amp_init_loss_scaling")
        for key, value in state.get("extra", {}).items():
            if key.startswith("static:") and key[7:] in self.extra_vars:
                self._set(key[7:], value)

    def seed_step(self, step: int) -> None:
        import paddle

        t = self.spec.train
        paddle.seed(step_seed(t.seed, self.dist.rank, step))
        for i, rng in enumerate(self.dropout_rngs):
            named_generator(rng).manual_seed(dropout_seed(t.seed, self.dist.rank, step, i))

    def train_step(self, step: int, micro_batches: List[Dict[str, np.ndarray]]) -> StepResult:
        """One optimizer step (completed_steps = step before it) over this rank's micro-batches."""
        if len(micro_batches) != self.micro_per_step:
            raise ValueError(f"expected {self.micro_per_step} micro-batches per step, got {len(micro_batches)}")
        self.lr.set_completed_steps(step)
        self.seed_step(step)
        results = []
        for mb in micro_batches:
            out = self.exe.run(self.main, feed={k: mb[k] for k in self.feed_names}, fetch_list=self.fetch,
                               use_program_cache=True)
            loss, lm, sop = (float(np.asarray(x).reshape(-1)[0]) for x in out[:3])
            scale = float(np.asarray(out[3]).reshape(-1)[0]) if len(out) > 3 else None
            results.append(StepResult(loss, lm, sop, scale, bool(np.isfinite([loss, lm, sop]).all())))
        return mean_results(results)

    def eval_batch(self, mb: Dict[str, np.ndarray]) -> StepResult:
        out = self.exe.run(self.eval_program, feed={k: mb[k] for k in self.feed_names}, fetch_list=self.eval_fetch,
                           use_program_cache=True)
        loss, lm, sop = (float(np.asarray(x).reshape(-1)[0]) for x in out)
        return StepResult(loss, lm, sop)


def paddle_var_type_lod_tensor():
    from paddle.base import core

    return core.VarDesc.VarType.LOD_TENSOR
