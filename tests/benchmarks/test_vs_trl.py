"""benchmarks/vs_trl.py: its FLOP, peak and table helpers (no TRL needed), and a smallest end-to-end run
against TRL's GRPOTrainer where TRL is installed (``pip install -e '.[bench]'``; skipped otherwise)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    if "vs_trl" not in sys.modules:
        spec = importlib.util.spec_from_file_location("vs_trl", ROOT / "benchmarks" / "vs_trl.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["vs_trl"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["vs_trl"]
            raise
    return sys.modules["vs_trl"]


def _step(wall, gen, score, B=8, P=5, C=3, tokens=16):
    return {"wall": wall, "gen": gen, "score": score, "B": B, "P": P, "C": C, "gen_tokens": tokens}


def test_flops_count_the_padded_tokens_of_generation_and_training():
    vt = _bench()
    f = vt.step_flops(1000, {"B": 4, "P": 6, "C": 3})
    assert f["gen_tokens"] == 4 * (6 + 2)  # prefill, then C - 1 decode steps of one token per row
    assert f["train_tokens"] == 4 * 9
    assert f["gen"] == 2 * 1000 * 32
    assert f["train"] == 8 * 1000 * 36  # old-log-prob forward (2) + forward/backward (6)


def test_token_counter_counts_what_runs_by_phase():
    vt = _bench()

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10)

        def get_input_embeddings(self):
            return self.emb

        def forward(self, ids):
            return self.head(self.emb(ids))

    model = LM()
    counter = vt._TokenCounter()
    counter.attach(model)
    counter.attach(model)  # once only
    ids = torch.zeros(3, 5, dtype=torch.long)
    with torch.no_grad():
        counter.in_phase(model, "gen")(ids)  # a prefill: 3 rows x 5
        counter.in_phase(model, "gen")(ids[:, :1])  # a decode step: 3 x 1
        model(ids)  # old log-probs
        counter.in_phase(lambda: counter.in_phase(model, "gen")(ids), "eval")()  # evaluation: not counted
    model(ids[:2]).sum().backward()
    assert counter.take() == {"gen": 18, "nograd": 15, "grad": 10}
    assert counter.take() == {"gen": 0, "nograd": 0, "grad": 0}
    f = vt.step_model_flops(100, {"tokens": {"gen": 18, "nograd": 15, "grad": 10}, "B": 3, "P": 5, "C": 2})
    assert f == {"gen": 2 * 100 * 18, "train": 2 * 100 * 15 + 6 * 100 * 10, "counted": True}
    shape = vt.step_model_flops(100, {"tokens": {"gen": 0, "nograd": 15, "grad": 10}, "B": 3, "P": 5, "C": 2})
    assert shape["gen"] == 2 * 100 * 3 * 6 and not shape["counted"]  # no generation seen: the shape estimate


def test_linear_params_counts_each_matmul_weight_once():
    vt = _bench()
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied
    model = torch.nn.Sequential(emb, torch.nn.Linear(4, 4), head)
    assert vt.linear_params(model) == 4 * 4 + 10 * 4


def test_matmul_peak_is_a_positive_rate():
    vt = _bench()
    for dtype in ("float32", "bfloat16"):
        peak = vt.matmul_peak(64, dtype, repeats=2)
        assert math.isfinite(peak) and peak > 0


def test_summary_aggregate_and_tables():
    vt = _bench()
    assert vt.summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert vt.summarize([])["n"] == 0
    assert vt.run_order(3) == ["trl", "rlvr", "rlvr", "trl", "trl", "rlvr"]
    trl = {"warmup": 1, "linear_params": 1000, "steps": [_step(9, 9, 9), _step(2.0, 0.5, 0.1), _step(2.2, 0.6, 0.1)]}
    rl = {"warmup": 1, "linear_params": 1000, "steps": [_step(9, 9, 9), _step(1.0, 0.25, 0.05), _step(1.2, 0.3, 0.1)]}
    results = {"W1": {"trl": vt.aggregate([trl]), "rlvr": vt.aggregate([rl])}}
    a = results["W1"]["trl"]
    assert a["steps"] == 2 and a["wall"]["median"] == pytest.approx(2.1)  # the warm-up step is dropped
    assert a["train"]["min"] == pytest.approx(1.4)
    assert a["gen_flops_per_s"] == pytest.approx(2 * 2 * 1000 * 8 * 7 / 1.1)
    table = vt.format_speed_table(results)
    assert "TRL/rlvr" in table and "1.91x" in table  # 2.1 / 1.1
    flops = vt.format_flops_table(results, {"n": 64, "threads": 2, "float32": 1e10, "bfloat16": 4e10},
                                  {"W1": 1000})
    assert "fp32 10.0 GFLOP/s" in flops and "bf16 40.0 GFLOP/s" in flops and "%" in flops
    notes = vt.format_notes({"W1": {"same_prompts": True, "runs": [
        {**trl, "side": "trl", "optimizer": "AdamW fused"},
        {**rl, "side": "rlvr", "optimizer": "AdamW foreach", "steps": [{"old_logp_reused": 0.0}, {"old_logp_reused": 1.0},
                                                                      {"old_logp_reused": 1.0}]}]}})
    assert "W1: yes" in notes and "TRL AdamW fused; rlvr AdamW foreach" in notes and "reused on 100%" in notes
    p2 = vt.p2_summary([{"side": s, "p2": {"seconds": x, "step": 10, "start": 0.5, "target": 0.6}}
                        for s, x in (("trl", 30.0), ("rlvr", 10.0), ("trl", 20.0), ("rlvr", 12.0))])
    assert p2["ratio"] == pytest.approx(25.0 / 11.0)
    assert "TRL/rlvr 2.27x" in vt.format_p2_table(p2, 250, 10)
    p2 = vt.p2_summary([{"side": s, "p2": {"seconds": x, "step": None, "start": 0.5, "target": 0.6}}
                        for s, x in (("trl", None), ("rlvr", 10.0))])
    assert p2["ratio"] is None and "not reached" in vt.format_p2_table(p2, 250, 10)


def test_without_trl_it_says_so(monkeypatch, capsys):
    vt = _bench()
    monkeypatch.setattr(vt, "trl_version", lambda: None)
    assert vt.main(["--if-available"]) == 0
    assert "skipped" in capsys.readouterr().out
    assert vt.main([]) == 2


@pytest.mark.slow
def test_smallest_run_against_trl(tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("accelerate")
    out = tmp_path / "vs_trl.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_trl.py"), "--tiny", "--threads", "1", "--workloads", "W1,W3",
                           "--warmup", "1", "--steps", "2", "--repeats", "1", "--gemm", "256", "--p2", "--p2-seeds",
                           "1", "--p2-eval-every", "1", "--p2-max-steps", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)  # RLVR_CACHE: the session's private one
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "TRL/rlvr" in proc.stdout and "matmul peak" in proc.stdout and "P2:" in proc.stdout, proc.stdout
    report = json.loads(out.read_text())
    w1 = report["workloads"]["W1"]
    assert w1["same_prompts"], proc.stdout
    for side in ("trl", "rlvr"):
        s = w1["summary"][side]
        assert s["steps"] == 2 and s["wall"]["median"] > 0 and s["gen"]["median"] > 0
        assert s["gen_flops_per_s"] > 0
        # training FLOPs are counted from the tokens that ran: rlvr trains no row of zero advantage
        # (rlvr.train.zero_advantage), and the tiny warm start may leave every group all wrong
        trained = s["tokens_per_step"]["grad"] if side == "rlvr" else 1
        assert (s["train_flops_per_s"] > 0) == (trained > 0), s
    assert {r["side"] for r in report["p2"]["runs"]} == {"trl", "rlvr"}
    # W3: the same prompts on both sides, the 32k-vocabulary stand-in, every row trained (a dense reward), memory read
    w3 = report["workloads"]["W3"]
    assert w3["same_prompts"], proc.stdout
    assert any(o.startswith("model.path=") for o in w3["overrides"])
    for side in ("trl", "rlvr"):
        s = w3["summary"][side]
        assert s["steps"] == 2 and s["peak_rss_mib"] > s["rss_loaded_mib"] > 0
        assert s["tokens_per_step"]["grad"] > 0
    assert "peak RSS MiB" in proc.stdout
