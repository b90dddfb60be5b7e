"""Checkpoint -> dynamic-graph model directory: `python -m ernie_cluster.convert --run-dir RUN`.

    python -m ernie_cluster.convert --run-dir RUN [--checkpoint PATH] [--output DIR] [--no-verify]

0. Runs the run's frozen code (RUN/code, frozen by `submit`): started on other code (by hand, from a
   checkout) it starts itself again with that copy first on its path; a copy that still does not
   import, or differs from its manifest on disk, is refused (exit 4).
1. Picks the newest complete checkpoint of RUN (manifest verified; damaged ones skipped,
   one written by an incompatible spec refused), or `--checkpoint` (a `step_<N>` dir or
   `model_last`), which must verify.
2. Maps every parameter by its structured name onto paddlenlp's `ErnieForPretraining`
   (pretraining heads included). A parameter the model lacks, a model parameter the
   checkpoint lacks, or a shape mismatch is a loud error (exit 3) listing them all:
   never a silently partial conversion.
3. Writes `model_state.pdparams`, `config.json` + `model_config.json` and, when the spec
   has a vocab, the tokenizer files (`vocab.txt`, `tokenizer_config.json`,
   `special_tokens_map.json`) into a temp dir next to the output.
4. Verification (`convert.verify`, default on): one fixed batch of the valid split (of the
   train split when valid is empty) goes through the *static* program loaded from the
   checkpoint and through `ErnieForPretraining.from_pretrained(<temp dir>)` with dropout
   off; the largest absolute difference of losses and logits must be <= `convert.tolerance`;
   `ErnieModel.from_pretrained` must load too. The result is `convert_report.json` in the output.
5. Only a verified (or unverified by request) output replaces the previous one, with a
   rename: a good earlier conversion is never overwritten by a partial one. A failed
   verification leaves `<output>.failed_report.json` and exits 2.

CPU only is enough; the conversion job needs no GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .rundir import CONVERT_REPORT, RunDir

log = logging.getLogger("ernie_cluster.convert")

EXIT_OK = 0
EXIT_VERIFY = 2
EXIT_MAPPING = 3
EXIT_CODE = 4  # the run's frozen code cannot be the code that runs (damaged, or not importable first)
FROZEN_REEXEC_ENV = "ERNIE_CLUSTER_CONVERT_REEXEC"  # set on the restart: a second miss is an error, not a loop


class ConversionError(RuntimeError):
    pass


def _setup_logging() -> None:
    root = logging.getLogger("ernie_cluster")
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        root.addHandler(h)
        root.setLevel(logging.INFO)
        root.propagate = False


def choose_checkpoint(spec, run, checkpoint: Optional[str]):
    from .train.checkpoint import LAST_LINK, find_latest, verify_checkpoint

    if checkpoint:
        path = Path(checkpoint)
        if path.is_symlink() or path.name == LAST_LINK:
            path = path.resolve()
        ok, reason, info = verify_checkpoint(path, full=True)
        if not ok or info is None:
            raise ConversionError(f"checkpoint {checkpoint} is not complete: {reason}")
        return info
    info = find_latest(run.checkpoints, spec.compat_key())
    if info is None:
        raise ConversionError(f"no complete checkpoint in {run.checkpoints}; train first (or pass --checkpoint)")
    return info


def check_mapping(state: Dict[str, Any], expected: Dict[str, Tuple[int, ...]]) -> None:
    """Every model parameter present with the right shape, and nothing left over."""
    missing = sorted(set(expected) - set(state))
    unmapped = sorted(set(state) - set(expected))
    bad_shape = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
                 for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != tuple(expected[k])]
    problems: List[str] = []
    if missing:
        problems.append(f"{len(missing)} model parameter(s) missing from the checkpoint: " + ", ".join(missing))
    if unmapped:
        problems.append(f"{len(unmapped)} checkpoint tensor(s) map to no model parameter: " + ", ".join(unmapped))
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatch(es): " + "; ".join(bad_shape))
    if problems:
        raise ConversionError("parameter mapping failed:\n  " + "\n  ".join(problems))


def _expected_shapes(config: Dict[str, Any]) -> Dict[str, Tuple[int, ...]]:
    import paddle

    from .train.model import create_model

    paddle.disable_static()
    model = create_model(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def static_forward(config: Dict[str, Any], binary_head: bool, state: Dict[str, Any], batch: Dict[str, Any]) -> Dict[str, Any]:
    """The checkpoint through a static program (eval mode): losses and logits."""
    import numpy as np
    import paddle

    from .train.model import FEED_SPECS, canonical_names, create_model, forward_losses

    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
            feeds = {}
            for name, dtype in FEED_SPECS:
                shape = list(np.asarray(batch[name]).shape)
                feeds[name] = paddle.static.data(name, [-1] + shape[1:], dtype)
            model = create_model(config)
            loss, lm, sop, logits, sop_logits = forward_losses(model, feeds, binary_head)
            names = {k: v.name for k, v in model.state_dict().items()}
        test_prog = main.clone(for_test=True)
        exe = paddle.static.Executor(paddle.CPUPlace())
        scope = paddle.static.Scope()
        with paddle.static.scope_guard(scope):
            exe.run(startup)
            canon, _ = canonical_names(names)
            for n in canon:
                scope.find_var(names[n]).get_tensor().set(np.asarray(state[n]).astype("float32"), paddle.CPUPlace())
            out = exe.run(test_prog, feed={k: batch[k] for k, _ in FEED_SPECS}, fetch_list=[loss, lm, sop, logits, sop_logits])
        return dict(zip(("loss", "lm_loss", "sop_loss", "logits", "sop_logits"), (np.asarray(x) for x in out)))
    finally:
        paddle.disable_static()


def dynamic_forward(model_dir: Path, binary_head: bool, batch: Dict[str, Any]) -> Dict[str, Any]:
    import numpy as np
    import paddle
    from paddlenlp.transformers import ErnieForPretraining

    from .train.model import forward_losses

    paddle.disable_static()
    model = ErnieForPretraining.from_pretrained(str(model_dir))
    model.eval()
    with paddle.no_grad():
        tensors = {k: paddle.to_tensor(v) for k, v in batch.items()}
        loss, lm, sop, logits, sop_logits = forward_losses(model, tensors, binary_head)
    return dict(zip(("loss", "lm_loss", "sop_loss", "logits", "sop_logits"),
                    (np.asarray(x.numpy()) for x in (loss, lm, sop, logits, sop_logits))))


def fixed_batch(spec, run) -> Tuple[Dict[str, Any], str]:
    """The first micro-batch of the valid split (train split when valid is empty)."""
    from .train.data import eval_micro_batches, open_datasets
    from .train.dist_env import DistEnv

    single = DistEnv(rank=0, world_size=1, local_rank=0, local_size=1, node_rank=0)
    datasets = open_datasets(spec, run.data_cache, is_builder=True)
    for split in ("valid", "train"):
        ds = datasets.get(split)
        if ds is not None and len(ds) > 0:
            mbs = eval_micro_batches(spec, ds, single, 0, 1)
            if mbs:
                return {k: v for k, v in mbs[0].items()}, split
    raise ConversionError("no data for the verification batch (valid and train splits are empty)")


def convert(run_dir: Path, checkpoint: Optional[str] = None, output: Optional[str] = None, verify: Optional[bool] = None) -> Dict[str, Any]:
    import numpy as np

    from .spec import load_frozen
    from .train.checkpoint import MODEL_FILE, paddle_load, write_model_dir
    from .train.model import model_config

    run = RunDir(Path(run_dir).resolve())
    spec = load_frozen(run.spec)
    out_dir = Path(output).resolve() if output else spec.convert_dir()
    verify = spec.convert.verify if verify is None else verify
    t0 = time.time()
    info = choose_checkpoint(spec, run, checkpoint)
    log.info("converting %s (step %d) -> %s", info.path, info.step, out_dir)
    config = info.trainer_state.get("model_config") or model_config(spec)
    state = {k: np.asarray(v) for k, v in paddle_load(info.path / MODEL_FILE).items()}
    expected = _expected_shapes(config)
    check_mapping(state, expected)

    report: Dict[str, Any] = {
        "checkpoint": str(info.path), "checkpoint_step": info.step, "n_params": len(expected),
        "n_tensors": len({id(v) for v in state.values()}),
        "n_elements": int(sum(v.size for v in {id(v): v for v in state.values()}.values())),
        "output": str(out_dir), "verified": bool(verify), "tolerance": spec.convert.tolerance,
    }

    def extras(tmp: Path) -> None:
        """Into the temp model directory, after the weights: config, tokenizer, the verification, the report."""
        from .train.model import save_tokenizer, write_model_config

        write_model_config(config, tmp)
        save_tokenizer(spec, tmp)
        if verify:
            report.update(verify_model_dir(tmp, spec, run, config, state))
            if not report["passed"]:
                raise VerificationFailed(report)
        else:
            report.update({"passed": None, "max_abs_diff": None})
        report["seconds"] = round(time.time() - t0, 3)
        (tmp / CONVERT_REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    try:
        write_model_dir(out_dir, state, extras)
    except VerificationFailed as exc:
        failed = out_dir.parent / f"{out_dir.name}.failed_report.json"
        failed.write_text(json.dumps(exc.report, indent=2, sort_keys=True) + "\n")
        raise
    log.info("converted step %d: %d parameters, max |static - dynamic| = %s (tolerance %g) -> %s",
             info.step, report["n_params"], report.get("max_abs_diff"), spec.convert.tolerance, out_dir)
    return report


def verify_model_dir(model_dir: Path, spec, run: RunDir, config: Dict[str, Any], state: Dict[str, Any]) -> Dict[str, Any]:
    """One fixed batch through the checkpoint's static program and through the model directory (dynamic):
    the report's verification part (`passed` when the largest difference is within convert.tolerance)."""
    import numpy as np
    from paddlenlp.transformers import ErnieModel

    binary_head = bool(spec.data.masking.binary_head)
    batch, split = fixed_batch(spec, run)
    ref = static_forward(config, binary_head, state, batch)
    got = dynamic_forward(model_dir, binary_head, batch)
    diffs = {k: float(np.max(np.abs(ref[k].astype("float64") - got[k].astype("float64")))) for k in ref}
    max_diff = max(diffs.values())
    ErnieModel.from_pretrained(str(model_dir))  # the bare encoder must load too
    return {"batch_split": split, "diffs": diffs, "max_abs_diff": max_diff,
            "static_loss": float(ref["loss"].reshape(-1)[0]), "dynamic_loss": float(got["loss"].reshape(-1)[0]),
            "passed": bool(max_diff <= spec.convert.tolerance), "ernie_model_loads": True}


class VerificationFailed(ConversionError):
    def __init__(self, report: Dict[str, Any]):
        self.report = report
        super().__init__(f"verification failed: max |static - dynamic| = {report.get('max_abs_diff')} > "
                         f"tolerance {report.get('tolerance')} ({report.get('diffs')})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ernie_cluster.convert",
                                     description="convert the newest complete checkpoint into a dygraph model directory")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--checkpoint", help="a step_<N> directory (default: newest complete one)")
    parser.add_argument("--output", help="output directory (default: spec convert.output_dir or RUN/converted)")
    parser.add_argument("--no-verify", action="store_true", help="skip the static-vs-dynamic check")
    args = parser.parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")
    import numpy  # noqa: F401 - numpy before paddle (paddle 2.6 import-order bug)

    _setup_logging()
    from .train.checkpoint import CheckpointError
    from .train.data import DataSetupError
    from .train.model import ModelSetupError

    try:
        report = convert(Path(args.run_dir), args.checkpoint, args.output, False if args.no_verify else None)
    except VerificationFailed as exc:
        log.error("%s", exc)
        return EXIT_VERIFY
    except (ConversionError, CheckpointError, ModelSetupError, DataSetupError) as exc:
        log.error("conversion failed: %s", exc)
        return EXIT_MAPPING
    print(json.dumps(report, sort_keys=True))
    return EXIT_OK


def run_frozen(argv: List[str]) -> Optional[int]:
    """Before the conversion starts (`python -m` only: it may replace this process): None when this process
    runs the run's frozen code (or the run has none: submitted without it), else the exit status."""
    from .frozen_code import MANIFEST, FrozenCodeError, code_dir, code_environment, running_frozen, verify_code

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--run-dir")
    run_dir = parser.parse_known_args(argv)[0].run_dir
    if run_dir is None or not (code_dir(Path(run_dir)) / MANIFEST).is_file():
        return None
    _setup_logging()
    elsewhere = running_frozen(Path(run_dir))
    if elsewhere and os.environ.get(FROZEN_REEXEC_ENV):
        log.error("%s, even with it first on PYTHONPATH (Python < 3.11 started in a checkout?)", elsewhere)
        return EXIT_CODE
    if elsewhere:
        log.info("%s: starting again on it", elsewhere)
        env = {**os.environ, **code_environment(Path(run_dir), os.environ), FROZEN_REEXEC_ENV: "1"}
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "ernie_cluster.convert", *argv], env)
    try:
        damaged = verify_code(Path(run_dir))
    except FrozenCodeError as exc:
        damaged = [str(exc)]
    if damaged:
        log.error("the run's frozen code differs from its manifest (%s): %s", code_dir(Path(run_dir)),
                  "; ".join(damaged[:10]))
        return EXIT_CODE
    return None


if __name__ == "__main__":
    status = run_frozen(sys.argv[1:])
    sys.exit(main() if status is None else status)
