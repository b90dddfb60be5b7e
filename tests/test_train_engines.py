"""In-process checks of the static engine's GPU-oriented Fleet options, built on the CPU.

The spec refuses AMP on the CPU, so these tests switch it on behind validation's back: they
check the *program construction* of the GPU path (AMP loss scaling with the reference's lists
and init scale, recompute checkpoints on the encoder layer outputs, gradient merge) and that
the loss-scaling state survives the checkpoint format. On the CPU, Fleet adds AMP's
loss-scaling ops but no fp16 casts.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from helpers_batch import random_batch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SEQ, PRED, VOCAB = 32, 4, 200


def _spec(**train):
    from ernie_cluster.spec import validate_text

    text = yaml.safe_dump({
        "name": "engines", "output_dir": "/tmp/unused-engines",
        "cluster": {"backend": "local", "time": "01:00:00", "requeue": {"signal_lead_s": 30}},
        "data": {"input_prefix": "/nonexistent/x", "masking": {"max_predictions_per_seq": PRED}},
        "model": {"model_name_or_path": "ernie-1.0-base-zh", "random_init": True, "vocab_size": VOCAB, "hidden_size": 32,
                  "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                  "max_position_embeddings": SEQ, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "train": {"device": "cpu", "engine": "static", "max_seq_len": SEQ, "micro_batch_size": 2,
                  "global_batch_size": 4, "max_steps": 10},
    })
    spec = validate_text(text, "engines", [], check_paths=False)
    return spec.model_copy(update={"train": spec.train.model_copy(update=train)})


def _batch(seed=0):
    return random_batch(seed, vocab=VOCAB, seq=SEQ, pred=PRED)


def _in_fresh_process(fn) -> None:
    """Run fn in a spawned interpreter: fleet.init / static mode must not leak into the pytest process
    (paddlenlp's from_pretrained consults fleet's global state)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(fn).result(timeout=300)


def test_amp_recompute_gradient_merge_program_and_loss_scaling_state():
    _in_fresh_process(_check_amp_recompute_gradient_merge)


def _check_amp_recompute_gradient_merge():
    import numpy  # noqa: F401 - before paddle

    from ernie_cluster.train.dist_env import DistEnv
    from ernie_cluster.train.engine_static import StaticEngine
    from ernie_cluster.train.model import model_config
    from ernie_cluster.train.schedule import LRSchedule

    spec = _spec(use_amp=True, use_recompute=True, amp_init_loss_scaling=1024.0)
    assert spec.accumulate_steps == 2
    engine = StaticEngine(spec, DistEnv(0, 1, 0, 1, 0), model_config(spec), LRSchedule.from_spec(spec))
    st = engine.strategy
    assert st.amp and st.amp_configs["init_loss_scaling"] == 1024.0 and st.amp_configs["use_dynamic_loss_scaling"]
    assert list(st.amp_configs["custom_white_list"]) == ["softmax", "layer_norm", "gelu"]
    assert list(st.amp_configs["custom_black_list"]) == ["c_softmax_with_cross_entropy"]
    assert st.gradient_merge and st.gradient_merge_configs["k_steps"] == 2
    assert st.recompute and len(st.recompute_configs["checkpoints"]) == 2  # one per encoder layer
    assert st.execution_strategy.num_iteration_per_drop_scope == 10000
    res = engine.train_step(0, [_batch(0), _batch(1)])
    assert res.finite and res.loss_scale == 1024.0
    state = engine.optimizer_state()
    assert set(state["loss_scaling"]) == {"loss_scaling", "num_good_steps", "num_bad_steps"}
    assert int(state["loss_scaling"]["num_good_steps"][0]) == 1
    assert not state["extra"]  # the untied decoder weight paddlenlp leaves in the program is not saved
    assert len(state["accumulators"]) == len(engine.canonical)
    # the scale is restored from a checkpoint, not reset to amp_init_loss_scaling
    state["loss_scaling"]["loss_scaling"] = np.array([256.0], "float32")
    engine.set_optimizer_state(state)
    assert engine.train_step(1, [_batch(2), _batch(3)]).loss_scale == 256.0


@pytest.mark.parametrize("engine", ["static", "dynamic"])
def test_state_views_show_the_live_state_without_copying_and_follow_a_reallocation(engine):
    import functools

    _in_fresh_process(functools.partial(_check_state_views, engine))


def _check_state_views(kind):
    import pickle

    import numpy  # noqa: F401 - before paddle

    from ernie_cluster.train.dist_env import DistEnv
    from ernie_cluster.train.model import model_config
    from ernie_cluster.train.schedule import LRSchedule

    if kind == "static":
        from ernie_cluster.train.engine_static import StaticEngine as Engine

        spec = _spec(use_amp=True, amp_init_loss_scaling=1024.0)  # loss-scaling variables are in the views too
    else:
        from ernie_cluster.train.engine_dynamic import DynamicEngine as Engine

        spec = _spec(engine="dynamic")
    engine = Engine(spec, DistEnv(0, 1, 0, 1, 0), model_config(spec), LRSchedule.from_spec(spec))
    engine.train_step(0, [_batch(0), _batch(1)])
    model, opt = engine.state_views()
    assert pickle.dumps((model, opt), protocol=4) == pickle.dumps(
        (engine.model_state(), engine.optimizer_state()), protocol=4)
    before = {k: v.copy() for k, v in model.items()}
    engine.train_step(1, [_batch(2), _batch(3)])
    model2, opt2 = engine.state_views()
    fresh = engine.model_state()
    assert model2 is model and opt2 is opt  # the same views: the optimizer updated in place ...
    assert all(np.array_equal(model[k], fresh[k]) for k in fresh)  # ... and they show the new values
    assert sum(not np.array_equal(before[k], fresh[k]) for k in fresh) > len(fresh) // 2
    assert pickle.dumps(opt2, protocol=4) == pickle.dumps(engine.optimizer_state(), protocol=4)
    engine.set_model_state({k: v * 0 + 0.5 for k, v in fresh.items()})  # a checkpoint load writes in place
    model3, _ = engine.state_views()
    assert all(np.all(v == 0.5) for v in model3.values())
    # a variable given new memory gets a new view: none shows the old memory
    name = engine.canonical[0]
    if kind == "static":
        tensor, place = engine.scope.find_var(engine.names[name]).get_tensor(), engine.place
    else:
        import paddle

        tensor, place = engine.params[name].value().get_tensor(), paddle.CPUPlace()
    address, shape = tensor._ptr(), model3[name].shape
    tensor.set(np.zeros(model3[name].size * 64, np.float32), place)
    tensor.set(np.full(shape, 0.25, np.float32), place)
    assert tensor._ptr() != address
    model4, _ = engine.state_views()
    assert model4 is not model3 and model4[name] is not model3[name] and np.all(model4[name] == 0.25)
    assert all(np.array_equal(model4[k], v) for k, v in engine.model_state().items())
