"""Does domain-adaptive pretraining (DAPT) help? A miniature of Gururangan et al. 2020, "Don't Stop Pretraining".

One run, all through the project's own CLI (`python -m ernie_cluster submit jobs/ernie_tiny_local.yaml ...`,
local backend, the tiny CPU ERNIE of that spec):

  general   pretrain on the general corpus from random weights (G steps), convert to a model directory;
  (a) DAPT  D steps on the domain corpus starting from the general model's weights
            (`model.model_name_or_path=<general>/converted`);
  (b) scratch  the same D steps on the same domain data, same schedule and seed, from random weights.

Both domain runs write a snapshot every D/30 steps; every snapshot (and the general model) is evaluated here
on fixed batches (same samples, same masks) of the domain's and the general corpus's validation splits, in
eval mode: masked-LM loss averaged over all masked tokens (`mlm_loss`). The corpora (bench/dapt_corpora.py)
are generated at bench time, seeded: general = the toy corpus with 3% clinical sentences, domain = clinical
case notes; their token distributions differ (Jensen-Shannon divergence and top-50 overlap are reported).

The benchmark refuses to report when (a) did not start from the general weights: its trainer log must say
"initialised weights from <general model>" with no parameter left at its random init, and its first snapshot
must be far closer to the general model than (b)'s (`check_warm_start`).

Goal (issue #12): (a) reaches the domain loss that (b) ends with in at most a third of the steps.

    python -m bench.bench_dapt [--json OUT]         (full mode only: about 12 minutes on 2 cores)

Writes bench/results/dapt.png (the curves) and bench/results/dapt.json (rows, curves, divergence, in the
`python -m bench` result format, so `python -m bench.report bench/results/dapt.json` renders it).
`BENCH_DAPT_STEPS=G,D` changes the step counts; `BENCH_DAPT_KEEP=DIR` keeps the runs in DIR.
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a file: make `bench` and `ernie_cluster` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402  (before paddle: paddle 2.6 import-order bug)

from bench.common import (REPO, RESULTS_DIR, Skip, git_commit, machine_info, machine_summary, make_row,  # noqa: E402
                          module_main, normalize_row, write_json)
from bench.dapt_figures import at_step, first_reaching, interpolated_crossing, plot  # noqa: E402
from ernie_cluster.rundir import RunDir  # noqa: E402

os.environ.setdefault("GLOG_minloglevel", "2")

SPEC = "jobs/ernie_tiny_local.yaml"
GENERAL_STEPS, DOMAIN_STEPS = 3000, 1500
SNAPSHOTS = 30                 # per domain run
EVAL_SAMPLES = 512             # fixed validation samples per evaluation
EVAL_BATCH = 32                # samples per evaluation batch (the loss is per masked token: only speed depends on it)
SPLIT = "90,10,0"              # by documents; no test split (the trainer's final test eval is skipped)
GOAL_FRACTION = 1 / 3
# check_warm_start: median per-tensor correlation with the general model at the first snapshot. (b) starts from
# the very random init the general run started from (same seed), so it correlates with the general model too;
# (a) must be much closer: 1 - corr(a) at most a quarter of 1 - corr(b).
WARM_MIN_CORR, CLOSER_FACTOR = 0.5, 4.0
PNG = RESULTS_DIR / "dapt.png"
RESULT_JSON = RESULTS_DIR / "dapt.json"


class WarmStartError(RuntimeError):
    """(a) did not start from the general model's weights: the comparison would mean nothing."""


# ------------------------------------------------------------------- training ---

def submit(work: Path, name: str, *, corpus: str, vocab: str, prefix: Path, steps: int, save_steps: int,
           model: Optional[Path] = None, convert: bool = False, timeout: float = 3000) -> Dict[str, Any]:
    """One training run through the project's CLI; returns its paths and wall time."""
    run = work / name
    loss_log = work / f"{name}.loss.jsonl"
    cmd = [sys.executable, "-m", "ernie_cluster", "submit", SPEC, f"name=dapt-{name}", f"output_dir={run}",
           f"data.raw_corpus={corpus}", f"data.vocab_file={vocab}", f"data.input_prefix={prefix}",
           f"data.split={SPLIT}", f"train.max_steps={steps}", f"train.save_steps={save_steps}",
           f"train.checkpoint_steps={steps}", f"train.eval_freq={steps}", "train.logging_freq=100",
           f"convert.enabled={'true' if convert else 'false'}", "--force"]
    if model is not None:  # the tiny job pretrains from scratch; (a) starts from the general model instead
        cmd += [f"model.model_name_or_path={model}", "model.random_init=false"]
    env = {**os.environ, "ERNIE_CLUSTER_LOSS_LOG": str(loss_log)}
    env.pop("ERNIE_CLUSTER_TEST_STOP_AT_STEP", None)
    print(f"bench_dapt: training {name}: {steps} steps ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    (work / f"{name}.submit.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"training run {name} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
    worker = sorted(glob.glob(str(run / "logs" / "attempt-*" / "node0" / "workerlog.0")))
    if len(worker) != 1:
        raise RuntimeError(f"training run {name}: expected one attempt, found {len(worker)} worker logs "
                           f"under {run / 'logs'}")
    return {"name": name, "run": run, "wall_s": wall, "workerlog": Path(worker[0]), "loss_log": loss_log}


def snapshots(run: Path) -> Dict[int, Path]:
    """step -> snapshot directory of a run."""
    out = {}
    for d in RunDir(run).snapshots.glob("model_*"):
        m = re.fullmatch(r"model_(\d+)", d.name)
        if m and (d / "model_state.pdparams").is_file():
            out[int(m.group(1))] = d
    return dict(sorted(out.items()))


def first_losses(loss_log: Path, n: int = 1) -> List[float]:
    lines = [json.loads(x) for x in loss_log.read_text().splitlines() if x.strip()]
    return [float(r["lm_loss"]) for r in lines[:n]]


# ------------------------------------------------------------------ warm start ---

def load_state(model_dir: Path) -> Dict[str, np.ndarray]:
    import paddle

    state = paddle.load(str(Path(model_dir) / "model_state.pdparams"), return_numpy=True)
    return {k: np.asarray(v) for k, v in state.items()}


def tensor_correlation(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> float:
    """Median Pearson correlation over the matrices both states share (biases and norms skipped)."""
    corrs = []
    for k, x in a.items():
        y = b.get(k)
        if y is None or x.ndim < 2 or x.shape != y.shape:
            continue
        x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
        if x.std() == 0 or y.std() == 0:
            continue
        corrs.append(float(np.corrcoef(x, y)[0, 1]))
    if not corrs:
        raise WarmStartError("no weight matrix in common between the two models")
    return float(np.median(corrs))


def check_warm_start(workerlog_text: str, general_dir: Path, corr_warm: float, corr_cold: float) -> None:
    """Raise WarmStartError unless (a)'s trainer loaded the general weights and (a) still resembles them.

    workerlog_text: (a)'s trainer log; corr_warm / corr_cold: `tensor_correlation` of (a)'s and (b)'s first
    snapshot with the general model.
    """
    wanted = f"initialised weights from {general_dir}"
    if wanted not in workerlog_text:
        found = re.findall(r"initialised weights from \S+", workerlog_text)
        raise WarmStartError(f"(a)'s trainer log does not say '{wanted}'"
                             + (f" (it says: {found[0]})" if found else " (it started from random weights)"))
    if "resumed from" in workerlog_text:
        raise WarmStartError("(a) resumed from a checkpoint instead of starting from the general model")
    for line in workerlog_text.splitlines():
        if "keep their random init" in line and "WARNING" in line:
            raise WarmStartError(f"(a) left some parameters at their random init: {line.strip()[:300]}")
    if not (corr_warm >= WARM_MIN_CORR and (1 - corr_warm) <= (1 - corr_cold) / CLOSER_FACTOR):
        raise WarmStartError(
            f"first snapshots vs the general model: median weight correlation (a) {corr_warm:.3f}, "
            f"(b) {corr_cold:.3f}; "
            f"(a) needs >= {WARM_MIN_CORR} and to be {CLOSER_FACTOR:g}x closer to the general model than (b) "
            f"(in 1 - correlation): (a) does not look like a continuation of the general model")


def same_setup(run_a: Path, run_b: Path) -> None:
    """(a) and (b) must differ in their starting weights only: same data, masking, seed, schedule, shape."""
    from ernie_cluster.spec import load_frozen

    a, b = load_frozen(run_a / "spec.yaml"), load_frozen(run_b / "spec.yaml")
    for section in ("data", "train"):
        if getattr(a, section).model_dump() != getattr(b, section).model_dump():
            raise RuntimeError(f"(a) and (b) differ in {section}: the comparison would not be like for like")
    # where step 0 starts from is the one difference by design
    ma = {k: v for k, v in a.model.model_dump().items() if k not in ("model_name_or_path", "random_init")}
    mb = {k: v for k, v in b.model.model_dump().items() if k not in ("model_name_or_path", "random_init")}
    if ma != mb:
        raise RuntimeError("(a) and (b) differ in model.*: the comparison would not be like for like")


# ------------------------------------------------------------------ evaluation ---

def eval_batches(run: Path, cache_dir: Path, n_samples: int = EVAL_SAMPLES,
                 batch_size: int = EVAL_BATCH) -> List[Dict[str, np.ndarray]]:
    """Fixed micro-batches of the validation split the run trained against (its frozen spec: data, masking, seed)."""
    from data_tools.loader import collate
    from ernie_cluster.spec import load_frozen
    from ernie_cluster.train.data import open_datasets

    spec = load_frozen(run / "spec.yaml")
    ds = open_datasets(spec, cache_dir, is_builder=True)["valid"]
    if ds is None:
        raise RuntimeError(f"{run}: the spec has no validation split")
    return [collate([ds[i] for i in range(s, min(s + batch_size, n_samples))], ds.max_seq_len,
                    ds.max_predictions_per_seq, ds.pad_id) for s in range(0, n_samples, batch_size)]


def load_model(model_dir: Path):
    """ErnieForPretraining with every parameter from model_dir (raises if any is missing), in eval mode."""
    import logging

    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieForPretraining

    logging.getLogger("PaddleNLP").setLevel(logging.WARNING)  # one "Loading configuration file" line per snapshot
    config = ErnieConfig.from_pretrained(str(model_dir))
    model = ErnieForPretraining(config)
    state = paddle.load(str(Path(model_dir) / "model_state.pdparams"))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise RuntimeError(f"{model_dir}: model_state.pdparams lacks {missing[:5]}")
    for k, v in own.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise RuntimeError(f"{model_dir}: {k} has shape {tuple(state[k].shape)}, the config says {tuple(v.shape)}")
    model.set_state_dict(state)
    model.eval()
    return model


def mlm_loss(model_or_dir, batches: Sequence[Dict[str, np.ndarray]]) -> Tuple[float, int]:
    """(masked-LM loss averaged over every masked token of the batches, number of masked tokens), eval mode.

    Per batch this is exactly the trainer's lm_loss (`ernie_cluster.train.model.pretraining_losses`).
    """
    import paddle

    from ernie_cluster.train.model import forward_losses

    model = load_model(Path(model_or_dir)) if isinstance(model_or_dir, (str, Path)) else model_or_dir
    total, tokens = 0.0, 0
    with paddle.no_grad():
        for mb in batches:
            feed = {k: paddle.to_tensor(v) for k, v in mb.items()}
            _, lm, _, _, _ = forward_losses(model, feed, binary_head=False)
            w = float(mb["masked_lm_weights"].sum())
            total += float(lm) * max(w, 1.0)
            tokens += int(w)
    return total / max(tokens, 1), tokens


# ------------------------------------------------------------------------ run ---

def step_counts() -> Tuple[int, int]:
    raw = os.environ.get("BENCH_DAPT_STEPS")
    if not raw:
        return GENERAL_STEPS, DOMAIN_STEPS
    g, d = (int(x) for x in raw.split(","))
    if g < 1 or d < SNAPSHOTS:
        raise ValueError(f"BENCH_DAPT_STEPS={raw!r}: need G >= 1 and D >= {SNAPSHOTS}")
    return g, d


def run(quick: bool) -> List[Dict[str, Any]]:
    if quick:
        raise Skip("full mode only (about 12 minutes on 2 cores): bench/run --only dapt")
    general_steps, domain_steps = step_counts()
    keep = os.environ.get("BENCH_DAPT_KEEP")
    work = Path(keep).resolve() if keep else Path(tempfile.mkdtemp(prefix="ernie-bench-dapt-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    try:
        m = _train(work, general_steps, domain_steps)
        m.update(_evaluate(work, m, domain_steps))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    m.update(general_steps=general_steps, domain_steps=domain_steps, wall=time.perf_counter() - t_start)
    rows = _rows(m)
    plot(PNG, m["dom_a"], m["dom_b"], m["gen_a"], m["gen_b"], m["dom_b"][-1][1], m["reach"], m["gen_on_gen"],
         domain_steps, general_steps, m["uniform"], GOAL_FRACTION)
    _write_result(m, rows)
    return rows


def _train(work: Path, general_steps: int, domain_steps: int) -> Dict[str, Any]:
    """The corpora, their divergence and the three runs: general (converted), (a) DAPT from it, (b) scratch."""
    from bench import dapt_corpora as corpora

    save_every = domain_steps // SNAPSHOTS
    paths = corpora.write_corpora(str(work / "corpora"))
    div = corpora.divergence(corpora.token_counts(corpora.read_documents(paths["general"]), paths["vocab"]),
                             corpora.token_counts(corpora.read_documents(paths["domain"]), paths["vocab"]))
    vocab = paths["vocab"]
    gen = submit(work, "general", corpus=paths["general"], prefix=work / "data" / "general", steps=general_steps,
                 save_steps=general_steps, convert=True, vocab=vocab)
    dapt = submit(work, "dapt", corpus=paths["domain"], prefix=work / "data" / "domain", steps=domain_steps,
                  save_steps=save_every, model=RunDir(gen["run"]).converted, vocab=vocab)
    scratch = submit(work, "scratch", corpus=paths["domain"], prefix=work / "data" / "domain",
                     steps=domain_steps, save_steps=save_every, vocab=vocab)
    return {"div": div, "gen": gen, "dapt": dapt, "scratch": scratch, "save_every": save_every}


def _evaluate(work: Path, m: Dict[str, Any], domain_steps: int) -> Dict[str, Any]:
    """Refuse unless (a) started from the general model; then every snapshot's loss on both validation splits."""
    t_eval = time.perf_counter()
    gen, dapt, scratch = m["gen"], m["dapt"], m["scratch"]
    general_dir = RunDir(gen["run"]).converted
    snaps_a, snaps_b = snapshots(dapt["run"]), snapshots(scratch["run"])
    if max(snaps_a, default=0) != domain_steps or max(snaps_b, default=0) != domain_steps:
        raise RuntimeError(f"missing final snapshots: (a) {list(snaps_a)}, (b) {list(snaps_b)}")
    general_state = load_state(general_dir)
    first = min(snaps_a)
    corr_a = tensor_correlation(load_state(snaps_a[first]), general_state)
    corr_b = tensor_correlation(load_state(snaps_b[first]), general_state)
    check_warm_start(dapt["workerlog"].read_text(errors="replace"), general_dir, corr_a, corr_b)
    same_setup(dapt["run"], scratch["run"])

    dom_batches = eval_batches(dapt["run"], work / "eval_cache" / "domain")
    gen_batches = eval_batches(gen["run"], work / "eval_cache" / "general")
    general_model = load_model(general_dir)
    gen_on_dom, dom_tokens = mlm_loss(general_model, dom_batches)
    gen_on_gen, gen_tokens = mlm_loss(general_model, gen_batches)
    del general_model
    dom_a: List[Tuple[int, float]] = [(0, gen_on_dom)]
    gen_a: List[Tuple[int, float]] = [(0, gen_on_gen)]
    dom_b: List[Tuple[int, float]] = []
    gen_b: List[Tuple[int, float]] = []
    for snaps, dom, gen_curve in ((snaps_a, dom_a, gen_a), (snaps_b, dom_b, gen_b)):
        for step, d in snaps.items():
            model = load_model(d)
            dom.append((step, mlm_loss(model, dom_batches)[0]))
            gen_curve.append((step, mlm_loss(model, gen_batches)[0]))
    return {"first": first, "corr_a": corr_a, "corr_b": corr_b, "gen_on_dom": gen_on_dom, "gen_on_gen": gen_on_gen,
            "dom_tokens": dom_tokens, "gen_tokens": gen_tokens, "dom_a": dom_a, "dom_b": dom_b, "gen_a": gen_a,
            "gen_b": gen_b, "eval_s": time.perf_counter() - t_eval,
            "uniform": float(np.log(json.loads((general_dir / "config.json").read_text())["vocab_size"])),
            "step1": {"a": first_losses(dapt["loss_log"])[0], "b": first_losses(scratch["loss_log"])[0]}}


def _rows(m: Dict[str, Any]) -> List[Dict[str, Any]]:
    dom_a, dom_b, domain_steps, save_every = m["dom_a"], m["dom_b"], m["domain_steps"], m["save_every"]
    target = dom_b[-1][1]
    m["reach"] = reach = first_reaching(dom_a, target)
    ratio = reach / domain_steps if reach is not None else None
    met = ratio is not None and ratio <= GOAL_FRACTION + 1e-9
    gen_on_dom, gen_on_gen, uniform, div = m["gen_on_dom"], m["gen_on_gen"], m["uniform"], m["div"]
    m["machine"] = machine = machine_summary()
    setup = (f"tiny ERNIE of {SPEC} (hidden 64, 2 layers, seq 128, batch 16, lr 1e-3 warmup 5% linear to 1e-4), "
             f"{m['general_steps']} general steps, then {domain_steps} domain steps for (a) and (b) each, same data "
             f"order and seed; losses on {EVAL_SAMPLES} fixed domain validation samples ({m['dom_tokens']} masked "
             f"tokens) and {EVAL_SAMPLES} general ones ({m['gen_tokens']} tokens), eval mode")
    rows = [
        make_row("dapt_steps_to_scratch_final_loss", reach, "steps",
                 baseline=f"(b) from random weights, all its steps (final domain valid MLM loss {target:.3f})",
                 baseline_value=domain_steps,
                 goal=f"<= 1/3 of the steps (ratio <= {GOAL_FRACTION:.3f})", goal_met=met, machine=machine,
                 note=(f"(a) first reaches (b)'s final domain loss at step {reach} of {domain_steps} (evaluated every "
                       f"{save_every} steps, so at most {reach}; linear between evaluations: step "
                       f"{interpolated_crossing(dom_a, target):.0f}; step 0 = the general model, {gen_on_dom:.3f})"
                       if reach is not None else
                       f"(a) never reaches (b)'s final domain loss {target:.3f}; its best is "
                       f"{min(l for _, l in dom_a):.3f}, its final {dom_a[-1][1]:.3f}") + "; " + setup),
    ]
    for frac in (0.1, GOAL_FRACTION, 1.0):
        sa, la = at_step(dom_a, round(domain_steps * frac))
        sb, lb = at_step(dom_b, round(domain_steps * frac))
        rows.append(make_row(f"dapt_domain_loss_step{sa}", la, "loss",
                             baseline=f"(b) from random weights at step {sb}", baseline_value=lb, machine=machine,
                             note=f"domain validation MLM loss of (a) DAPT after {sa} domain steps"))
    rows += [
        make_row("dapt_domain_loss_general_model", gen_on_dom, "loss",
                 baseline="the same model on the general validation split", baseline_value=gen_on_gen, machine=machine,
                 note=f"the general model before any domain step: the domain is new to it (distribution shift). "
                      f"Training lm_loss of the first domain step: (a) {m['step1']['a']:.3f} (the general model's "
                      f"level), (b) {m['step1']['b']:.3f} (ln V = {uniform:.3f}: random weights)"),
        make_row("dapt_general_loss_after", m["gen_a"][-1][1], "loss",
                 baseline="general model before DAPT", baseline_value=gen_on_gen, machine=machine,
                 note=f"general validation MLM loss after {domain_steps} DAPT steps (forgetting); a uniform guess "
                      f"over the vocab scores ln V = {uniform:.3f}; (b) ends at {m['gen_b'][-1][1]:.3f} on the general "
                      "split"),
        make_row("dapt_corpus_divergence", div["jsd_bits"], "bits", goal=">= 0.3 bits and top-50 overlap <= 50%",
                 goal_met=div["jsd_bits"] >= 0.3 and div["top_overlap"] <= 0.5, machine=machine, higher_is_better=True,
                 note=(f"Jensen-Shannon divergence of the token unigram distributions (general vs domain); "
                       f"{div['top_overlap']:.0%} of the 50 most frequent tokens are shared; "
                       f"{div['q_mass_rare_in_p']:.0%} of the domain's tokens are >= 10x rarer in the general corpus")),
        make_row("dapt_wall_s", m["wall"], "s", machine=machine,
                 note=(f"general {m['gen']['wall_s']:.0f} s, (a) {m['dapt']['wall_s']:.0f} s, (b) "
                       f"{m['scratch']['wall_s']:.0f} s (each: submit, tokenize if needed, train, snapshots), "
                       f"evaluation {m['eval_s']:.0f} s; warm-start check: median weight correlation with the general "
                       f"model at step {m['first']}: (a) {m['corr_a']:.3f}, (b) {m['corr_b']:.3f}")),
    ]
    return rows


def _write_result(m: Dict[str, Any], rows: List[Dict[str, Any]]) -> None:
    result = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "seconds": round(m["wall"], 2),
        "quick": False, "git": git_commit(), "machine": machine_info(), "machine_summary": m["machine"],
        "rows": [dict(normalize_row(r), module="bench_dapt") for r in rows],
        "curves": {"domain_a": m["dom_a"], "domain_b": m["dom_b"], "general_a": m["gen_a"], "general_b": m["gen_b"]},
        "divergence": m["div"], "png": str(PNG.relative_to(REPO)),
        "steps": {"general": m["general_steps"], "domain": m["domain_steps"], "snapshot_every": m["save_every"]},
        "warm_start": {"corr_a": m["corr_a"], "corr_b": m["corr_b"], "first_snapshot": m["first"]},
        "first_step_train_lm_loss": m["step1"],
    }
    write_json(RESULT_JSON, result)
    print(f"bench_dapt: wrote {PNG} and {RESULT_JSON}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(module_main(run, name="bench_dapt"))
