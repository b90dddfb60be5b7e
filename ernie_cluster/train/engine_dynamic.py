"""The dynamic-graph (dygraph) data-parallel engine: the CPU path (gloo), and an option on GPUs.

Same model, criterion, LR schedule and data stream as the static engine. One step =
`accumulate_steps` micro-batches: backward of loss/k under `no_sync()` for all but the
last, then one optimizer step. With world size > 1 the model is wrapped in
`paddle.DataParallel` after `init_parallel_env()` (gradients all-reduced and averaged over
ranks); at world size 1 nothing is wrapped. Fleet's hybrid init is avoided on purpose: it
builds a gloo group per parallel axis, and under load one of those connects could be refused.

`train.use_recompute` recomputes each encoder layer in backward (paddlenlp's TransformerEncoder
calls `fleet.utils.recompute`, whose `preserve_rng_state` replays the forward's RNG state, so
the recomputed dropout masks are the forward's and the step's result is unchanged). Its
backward re-enters autograd, which DataParallel's reducer refuses ("parameter ... has been
ready before"), so with several ranks every micro-batch runs under `no_sync()` and the
gradients are all-reduced (averaged) once after the last one.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .engine_common import (ACC_KINDS, Collective, HostViews, StepResult, empty_optimizer_state, get_accumulator,
                            gpu_device_id, mean_results, put_accumulator, step_seed)
from .engine_static import make_lr_scheduler
from .model import canonical_names, create_model, forward_losses, no_decay

log = logging.getLogger("ernie_cluster.train")

AMP_WHITE = ["softmax", "layer_norm", "gelu"]
AMP_BLACK = ["c_softmax_with_cross_entropy"]


class DynamicCollective(Collective):
    def __init__(self, world_size: int):
        self.world_size = world_size

    def _all_reduce(self, values: np.ndarray, op: str) -> np.ndarray:
        import paddle
        import paddle.distributed as pdist

        t = paddle.to_tensor(values)
        pdist.all_reduce(t, op=getattr(pdist.ReduceOp, op))
        return t.numpy().reshape(-1)

    def max_int(self, value: int) -> int:
        if self.world_size == 1:
            return int(value)
        return int(self._all_reduce(np.array([int(value)], dtype="int64"), "MAX")[0])

    def barrier(self) -> None:
        if self.world_size > 1:
            import paddle.distributed as pdist

            pdist.barrier()

    def sum_floats(self, values: List[float]) -> List[float]:
        if self.world_size == 1:
            return [float(v) for v in values]
        return [float(v) for v in self._all_reduce(np.asarray(values, dtype="float64"), "SUM")]


class DynamicEngine:
    name = "dynamic"
    _host_views: Optional[HostViews] = None  # state_views, made at the first call

    def __init__(self, spec, dist, config: Dict[str, Any], schedule, plan=None):
        import paddle

        self.spec = spec
        self.dist = dist
        self.config = config
        self.schedule = schedule
        self.binary_head = bool(spec.data.masking.binary_head)
        # the attempt's accumulation: an elastic attempt's follows its nodes (spec.batch_plan)
        self.plan = plan if plan is not None else spec.batch_plan(world_size=dist.world_size)
        self.micro_per_step = self.plan.accumulate_steps
        t = spec.train
        paddle.disable_static()
        if t.device == "gpu":
            paddle.set_device(f"gpu:{gpu_device_id(dist)}")
        else:
            paddle.set_device("cpu")
        if dist.world_size > 1:
            paddle.distributed.init_parallel_env()  # one global group: data parallel is all this engine does
        paddle.seed(t.seed)  # identical initialisation on every rank (DataParallel also broadcasts)
        self.model = create_model(config)
        self.model.train()
        if t.use_recompute:
            encoder = self.model.ernie.encoder
            if not hasattr(encoder, "enable_recompute"):
                raise RuntimeError("train.use_recompute: this paddlenlp's TransformerEncoder has no enable_recompute")
            # Set directly: paddlenlp 2.8's recompute_disable() enables it too.
            encoder.enable_recompute = True
        sd = self.model.state_dict()
        self.params = {k: v for k, v in sd.items()}
        self.names = {k: v.name for k, v in sd.items()}
        self.canonical, self.aliases = canonical_names(self.names)
        decay = {self.names[n] for n in self.canonical if not no_decay(n)}
        self.lr = make_lr_scheduler(schedule)
        clip = paddle.nn.ClipGradByGlobalNorm(t.grad_clip) if t.grad_clip > 0 else None
        self.optimizer = paddle.optimizer.AdamW(
            learning_rate=self.lr, parameters=self.model.parameters(), beta1=t.adam_beta1, beta2=t.adam_beta2,
            epsilon=t.adam_epsilon, weight_decay=t.weight_decay, apply_decay_param_fun=lambda n: n in decay,
            grad_clip=clip)
        # Create the Adam accumulators now so a checkpoint can be loaded into them directly
        # (paddle creates them lazily in the first step; its helper is set up the same way).
        from paddle.base.layer_helper import LayerHelper

        if self.optimizer.helper is None:
            self.optimizer.helper = LayerHelper(self.optimizer.__class__.__name__)
        self.optimizer._create_accumulators(paddle.static.default_main_program().global_block(),
                                            self.optimizer._parameter_list)
        self.use_amp = bool(t.use_amp)
        self.scaler = paddle.amp.GradScaler(init_loss_scaling=float(t.amp_init_loss_scaling),
                                            use_dynamic_loss_scaling=True) if self.use_amp else None
        self.dp_model = self.model
        self.dp_optimizer = self.optimizer
        if dist.world_size > 1:
            self.dp_model = paddle.DataParallel(self.model)
        self.manual_grad_sync = bool(t.use_recompute) and dist.world_size > 1
        if t.use_recompute:
            log.info("recompute: each of the %d encoder layers is recomputed in backward%s",
                     len(self.model.ernie.encoder.layers),
                     "; gradients all-reduced after the last micro-batch" if self.manual_grad_sync else "")
        self.collective = DynamicCollective(dist.world_size)

    # -- state ------------------------------------------------------------------
    def param_shapes(self) -> Dict[str, tuple]:
        return {n: tuple(p.shape) for n, p in self.params.items()}

    def model_state(self) -> Dict[str, np.ndarray]:
        return self._model_state(lambda n: self.params[n].numpy())

    def _model_state(self, get: Callable[[str], np.ndarray]) -> Dict[str, np.ndarray]:
        arrays = {n: get(n) for n in self.canonical}
        return {n: arrays[self.aliases.get(n, n)] for n in self.names}

    def set_model_state(self, state: Dict[str, np.ndarray], *, strict: bool = True) -> None:
        missing = [n for n in self.canonical if n not in state]
        if strict and missing:
            raise KeyError(f"checkpoint lacks parameters: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        for n in self.canonical:
            if n in state:
                p = self.params[n]
                value = np.asarray(state[n])
                if tuple(p.shape) != tuple(value.shape):
                    raise ValueError(f"{n}: checkpoint shape {tuple(value.shape)} != model shape {tuple(p.shape)}")
                p.set_value(value.astype(p.numpy().dtype, copy=False))

    def _acc(self, kind: str, canonical: str):
        return self.optimizer._accumulators[kind][self.names[canonical]]

    def optimizer_state(self) -> Dict[str, Any]:
        return self._optimizer_state(lambda n, k: self._acc(k, n).numpy())

    def _optimizer_state(self, get: Callable[[str, str], np.ndarray]) -> Dict[str, Any]:
        out = empty_optimizer_state()
        for n in self.canonical:
            for k in ACC_KINDS:
                put_accumulator(out, n, k, get(n, k))
        s = self.scaler.state_dict() if self.scaler is not None else {}
        if s:  # empty when the scaler is disabled (no GPU)
            out["loss_scaling"] = {
                "loss_scaling": np.asarray(s["scale"], dtype="float32").reshape(-1)[:1],
                "num_good_steps": np.array([int(s.get("incr_count", 0))], dtype="int32"),
                "num_bad_steps": np.array([int(s.get("decr_count", 0))], dtype="int32"),
            }
        return out

    def state_views(self) -> Optional[Tuple[Dict[str, np.ndarray], Dict[str, Any]]]:
        """(model_state, optimizer_state) as numpy views of the live parameters and Adam moments
        (`engine_common.HostViews`), valid until the next step. None on a GPU, whose state
        model_state()/optimizer_state() bring to the host."""
        if self.spec.train.device == "gpu" or (self.scaler is not None and self.scaler.state_dict()):
            return None  # (loss scaling is a GPU feature; its state is not a tensor here)

        def build(view):
            def param(n):
                return view(("param", n), lambda: self.params[n].value().get_tensor())

            def acc(n, k):
                return view((k, n), lambda: self._acc(k, n).value().get_tensor())

            return self._model_state(param), self._optimizer_state(acc)

        if self._host_views is None:
            self._host_views = HostViews()
        return self._host_views.tree(build)

    def set_optimizer_state(self, state: Dict[str, Any]) -> None:
        for n in self.canonical:
            for k in ACC_KINDS:
                value = np.asarray(get_accumulator(state, n, k))
                acc = self._acc(k, n)
                if tuple(acc.shape) != tuple(value.shape):
                    value = value.reshape(acc.shape)
                acc.set_value(value.astype(acc.numpy().dtype, copy=False))
        ls = state.get("loss_scaling")
        if self.scaler is not None and ls and self.scaler.state_dict():
            self.scaler.load_state_dict({
                "scale": np.asarray(ls["loss_scaling"]).reshape(-1)[:1].astype("float32"),
                "incr_ratio": self.scaler._incr_ratio, "decr_ratio": self.scaler._decr_ratio,
                "incr_every_n_steps": self.scaler._incr_every_n_steps,
                "decr_every_n_nan_or_inf": self.scaler._decr_every_n_nan_or_inf,
                "incr_count": int(np.asarray(ls.get("num_good_steps", [0])).reshape(-1)[0]),
                "decr_count": int(np.asarray(ls.get("num_bad_steps", [0])).reshape(-1)[0]),
                "use_dynamic_loss_scaling": True,
            })

    # -- steps ------------------------------------------------------------------
    def _to_tensors(self, mb: Dict[str, np.ndarray]):
        import paddle

        return {k: paddle.to_tensor(v) for k, v in mb.items()}

    def seed_step(self, step: int) -> None:
        import paddle

        paddle.seed(step_seed(self.spec.train.seed, self.dist.rank, step))

    def _autocast(self):
        import paddle

        if not self.use_amp:
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(custom_white_list=AMP_WHITE, custom_black_list=AMP_BLACK, level="O1")

    def train_step(self, step: int, micro_batches: List[Dict[str, np.ndarray]]) -> StepResult:
        if len(micro_batches) != self.micro_per_step:
            raise ValueError(f"expected {self.micro_per_step} micro-batches per step, got {len(micro_batches)}")
        self.lr.set_completed_steps(step)
        self.seed_step(step)
        self.dp_model.train()
        k = len(micro_batches)
        results = []
        for i, mb in enumerate(micro_batches):
            sync = (i == k - 1 and not self.manual_grad_sync) or self.dist.world_size == 1
            ctx = contextlib.nullcontext() if sync else self.dp_model.no_sync()
            with ctx:
                with self._autocast():
                    loss, lm, sop, _, _ = forward_losses(self.dp_model, self._to_tensors(mb), self.binary_head)
                scaled = loss / k if k > 1 else loss
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            vals = [float(loss.numpy()), float(lm.numpy()), float(sop.numpy())]
            results.append(StepResult(*vals, finite=bool(np.isfinite(vals).all())))
        if self.manual_grad_sync:
            from paddle.distributed.fleet.utils.hybrid_parallel_util import fused_allreduce_gradients_with_group

            fused_allreduce_gradients_with_group(list(self.model.parameters()), None)  # sum of grads/world
        if self.scaler is not None:
            self.scaler.step(self.dp_optimizer)
            self.scaler.update()
            scale = float(self.scaler._scale.numpy().reshape(-1)[0])
        else:
            self.dp_optimizer.step()
            scale = None
        self.dp_optimizer.clear_grad()
        res = mean_results(results)
        res.loss_scale = scale
        return res

    def eval_batch(self, mb: Dict[str, np.ndarray]) -> StepResult:
        import paddle

        self.model.eval()
        with paddle.no_grad(), self._autocast():
            loss, lm, sop, _, _ = forward_losses(self.model, self._to_tensors(mb), self.binary_head)
        self.model.train()
        return StepResult(float(loss.numpy()), float(lm.numpy()), float(sop.numpy()))
