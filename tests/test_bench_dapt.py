"""The DAPT benchmark's pieces that can fail: different corpora, the evaluation, the warm-start check. No training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(REPO))

from bench import bench_dapt, dapt_corpora  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    out = tmp_path_factory.mktemp("dapt_corpora")
    paths = dapt_corpora.write_corpora(str(out), general_docs=400, domain_docs=200)
    return {k: Path(v) for k, v in paths.items()}


def test_corpora_are_seeded_and_covered_by_the_vocab(corpora, tmp_path):
    again = dapt_corpora.write_corpora(str(tmp_path), general_docs=400, domain_docs=200)
    for key in ("general", "domain", "vocab"):
        assert Path(again[key]).read_bytes() == corpora[key].read_bytes(), key
    from data_tools.tokenizer import FastWordPieceTokenizer
    from data_tools.vocab import load_vocab

    tok = FastWordPieceTokenizer(str(corpora["vocab"]))
    unk = load_vocab(str(corpora["vocab"])).token_to_id["[UNK]"]
    for key in ("general", "domain"):
        ids = tok.encode(corpora[key].read_text(encoding="utf-8"))
        assert len(ids) > 10_000 and unk not in ids, key
    docs = dapt_corpora.read_documents(str(corpora["domain"]))
    assert len(docs) == 200 and all(len(d) >= 6 for d in docs)  # >= 2 sentences: sentence-order pairs


def test_corpora_differ_enough(corpora):
    """Stated thresholds: Jensen-Shannon divergence of the token unigrams >= 0.3 bits (at 6000/3000 documents
    the bench measures about 0.57), at most half of the 50 most frequent tokens shared, and at least a third of the
    domain's tokens 10x rarer in the general corpus; two halves of the general corpus are far below all of that."""
    vocab = str(corpora["vocab"])
    general = dapt_corpora.read_documents(str(corpora["general"]))
    domain = dapt_corpora.read_documents(str(corpora["domain"]))
    d = dapt_corpora.divergence(dapt_corpora.token_counts(general, vocab), dapt_corpora.token_counts(domain, vocab))
    assert d["jsd_bits"] >= 0.3 and d["top_overlap"] <= 0.5 and d["q_mass_rare_in_p"] >= 1 / 3, d
    half = len(general) // 2
    same = dapt_corpora.divergence(dapt_corpora.token_counts(general[:half], vocab),
                                   dapt_corpora.token_counts(general[half:], vocab))
    assert same["jsd_bits"] < 0.05 and same["top_overlap"] >= 0.8 and same["q_mass_rare_in_p"] < 0.05, same
    # the general corpus holds the domain's words, rarely (about 3% of its sentences)
    n_general = sum(len(doc) for doc in general)
    clinical = sum(1 for doc in general for s in doc if any(x in s for x in dapt_corpora.DISEASES))
    assert 0.005 < clinical / n_general < 0.06


def _eval_matches_trainer(run_dir: str, model_dir: str) -> dict:
    """In a fresh interpreter: the bench's dygraph evaluation vs the trainer's static eval program, same weights and
    batches."""
    import sys as _sys
    from pathlib import Path as _Path

    _sys.path.insert(0, str(_Path(__file__).resolve().parent.parent))
    import numpy as _np  # noqa: F401 - before paddle
    import paddle

    from bench import bench_dapt as bd
    from ernie_cluster.spec import load_frozen
    from ernie_cluster.train.dist_env import DistEnv
    from ernie_cluster.train.engine_static import StaticEngine
    from ernie_cluster.train.model import model_config, starting_weights
    from ernie_cluster.train.schedule import LRSchedule

    run = _Path(run_dir)
    batches = bd.eval_batches(run, run / "cache_a", n_samples=32, batch_size=8)
    again = bd.eval_batches(run, run / "cache_b", n_samples=32, batch_size=8)
    fixed = all(_np.array_equal(x[k], y[k]) for x, y in zip(batches, again) for k in x)
    ours = [bd.mlm_loss(_Path(model_dir), [mb])[0] for mb in batches]
    spec = load_frozen(run / "spec.yaml")
    engine = StaticEngine(spec, DistEnv(0, 1, 0, 1, 0), model_config(spec), LRSchedule.from_spec(spec))
    weights, _ = starting_weights(spec, engine.param_shapes())
    engine.set_model_state(weights, strict=True)
    theirs = [engine.eval_batch(mb).lm_loss for mb in batches]
    paddle.disable_static()
    return {"ours": ours, "theirs": theirs, "fixed": fixed, "n": len(batches),
            "masked": [int(mb["masked_lm_weights"].sum()) for mb in batches]}


def test_mlm_loss_equals_the_trainers_eval_on_the_same_model_and_batches(corpora, tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import yaml

    from data_tools.create_pretraining_data import create_pretraining_data
    from ernie_cluster.spec import validate_text

    prefix = tmp_path / "data" / "domain"
    prefix.parent.mkdir()
    create_pretraining_data([str(corpora["domain"])], str(corpora["vocab"]), str(prefix), workers=1, chinese=True,
                            cn_whole_word_segment=True, progress=False)
    model_dir = tmp_path / "model"
    run = tmp_path / "run"
    run.mkdir()
    # a model directory with random weights, written the way the trainer writes snapshots
    base = yaml.safe_load((REPO / bench_dapt.SPEC).read_text())
    base.update(output_dir=str(run), name="dapt-test")
    base["data"].update(raw_corpus=None, vocab_file=str(corpora["vocab"]), input_prefix=str(prefix),
                        split=bench_dapt.SPLIT)
    spec = validate_text(yaml.safe_dump(base), "dapt-test", [], check_paths=False)
    _write_random_model(spec, model_dir)
    base["model"].update(model_name_or_path=str(model_dir), random_init=False)
    (run / "spec.yaml").write_text(yaml.safe_dump(base))
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        res = pool.submit(_eval_matches_trainer, str(run), str(model_dir)).result(timeout=300)
    assert res["fixed"], "eval_batches must give the same samples and masks every time"
    assert res["n"] == 4 and min(res["masked"]) > 0
    np.testing.assert_allclose(res["ours"], res["theirs"], rtol=2e-5, atol=2e-5)
    assert all(4.0 < x < 10.0 for x in res["ours"])  # near ln(vocab) for random weights


def _write_random_model(spec, out: Path) -> None:
    import subprocess

    code = (
        "import sys, numpy, paddle\n"
        "from pathlib import Path\n"
        "from ernie_cluster.spec import validate_text\n"
        "from ernie_cluster.train.model import create_model, model_config, write_model_config\n"
        "spec = validate_text(open(sys.argv[1]).read(), 'x', [], check_paths=False)\n"
        "paddle.seed(7)\n"
        "cfg = model_config(spec)\n"
        "model = create_model(cfg)\n"
        "out = Path(sys.argv[2]); out.mkdir()\n"
        "paddle.save(model.state_dict(), str(out / 'model_state.pdparams'))\n"
        "write_model_config(cfg, out)\n"
    )
    spec_file = out.parent / "random_model_spec.yaml"
    spec_file.write_text(spec.to_yaml())
    proc = subprocess.run([sys.executable, "-c", code, str(spec_file), str(out)], cwd=str(REPO), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


GOOD_LOG = ("2026-01-01 00:00:00 [rank 0] INFO trainer rank 0/1 ...\n"
            "2026-01-01 00:00:01 [rank 0] INFO initialised weights from {d}\n"
            "2026-01-01 00:00:02 [rank 0] INFO step 100/1500 | loss 3.1\n")


def test_the_bench_refuses_to_report_when_a_did_not_load_the_general_weights(tmp_path):
    d = tmp_path / "general" / "converted"
    bench_dapt.check_warm_start(GOOD_LOG.format(d=d), d, corr_warm=0.95, corr_cold=0.01)
    bad = {
        "random start": "2026-01-01 [rank 0] INFO step 100/1500 | loss 6.9\n",
        "another model": GOOD_LOG.format(d=tmp_path / "other"),
        "resumed": GOOD_LOG.format(d=d) + "INFO resumed from /x/checkpoints/step_000000050: step 50\n",
        "partial load": GOOD_LOG.format(d=d) + "[rank 0] WARNING initial weights: 3 parameters keep their random "
                                               "init: ernie.encoder.layers.0.linear1.weight\n",
    }
    for why, text in bad.items():
        with pytest.raises(bench_dapt.WarmStartError):
            bench_dapt.check_warm_start(text, d, corr_warm=0.95, corr_cold=0.01)
    for warm, cold in ((0.1, 0.01), (0.95, 0.9)):  # the log says so, but the weights do not
        with pytest.raises(bench_dapt.WarmStartError):
            bench_dapt.check_warm_start(GOOD_LOG.format(d=d), d, corr_warm=warm, corr_cold=cold)


def test_run_stops_before_any_row_when_the_warm_start_check_fails(tmp_path, monkeypatch):
    """run() itself: with (a) trained from random weights (a fake trainer), no row and no result file appear."""
    calls = []

    def fake_submit(work, name, **kw):
        run = work / name
        for step in (15, 30):
            snap = run / "snapshots" / f"model_{step}"
            snap.mkdir(parents=True)
            (snap / "model_state.pdparams").write_bytes(b"")
        (run / "converted").mkdir(parents=True)
        log = work / f"{name}.workerlog"
        log.write_text("INFO step 10/20 | loss 6.9\n")  # no "initialised weights from"
        calls.append((name, kw.get("model")))
        return {"name": name, "run": run, "wall_s": 1.0, "workerlog": log, "loss_log": work / "none"}

    rng = np.random.RandomState(0)
    monkeypatch.setattr(bench_dapt, "submit", fake_submit)
    monkeypatch.setattr(bench_dapt, "load_state", lambda d: {"w": rng.rand(8, 8)})
    monkeypatch.setattr(bench_dapt, "RESULT_JSON", tmp_path / "dapt.json")
    monkeypatch.setattr(bench_dapt, "PNG", tmp_path / "dapt.png")
    monkeypatch.setenv("BENCH_DAPT_STEPS", "30,30")
    monkeypatch.delenv("BENCH_DAPT_KEEP", raising=False)
    with pytest.raises(bench_dapt.WarmStartError):
        bench_dapt.run(quick=False)
    assert [c[0] for c in calls] == ["general", "dapt", "scratch"]
    assert calls[1][1] is not None and str(calls[1][1]).endswith("converted") and calls[2][1] is None
    assert not (tmp_path / "dapt.json").exists() and not (tmp_path / "dapt.png").exists()


def test_goal_arithmetic_and_quick_mode_skip(tmp_path):
    curve = [(0, 5.0), (50, 4.0), (100, 3.5), (150, 3.0)]
    assert bench_dapt.first_reaching(curve, 3.5) == 100
    assert bench_dapt.first_reaching(curve, 2.0) is None
    assert bench_dapt.interpolated_crossing(curve, 3.75) == 75.0 and bench_dapt.interpolated_crossing(curve, 6) == 0
    assert bench_dapt.interpolated_crossing(curve, 2.0) is None
    assert bench_dapt.at_step(curve, 60) == (50, 4.0) and bench_dapt.at_step(curve, 75) == (50, 4.0)
    from bench.common import module_main

    out = tmp_path / "q.json"
    assert module_main(bench_dapt.run, ["--quick", "--json", str(out)], name="bench_dapt") == 0
    payload = json.loads(out.read_text())
    assert payload["skipped"] and "full mode" in payload["skipped"] and payload["rows"] == []
    from bench.__main__ import discover
    from bench.common import BENCH_DIR

    assert "bench_dapt" in discover(BENCH_DIR)  # found like bench_gpu: `bench/run` and `--only dapt` run it


def test_report_can_fill_a_second_readme_section():
    from bench import report

    text = ("a\n<!-- bench:begin -->\nold main\n<!-- bench:end -->\n"
            "b\n<!-- bench:dapt:begin -->\nold dapt\n<!-- bench:dapt:end -->\nc")
    new = report.replace_section(text, "| new | dapt |\n", section="dapt")
    assert new == text.replace("old dapt", "| new | dapt |")
    assert report.replace_section(text, "main\n") == text.replace("old main", "main")
