"""Tiny end-to-end runs of ``rlvr eval --k`` and ``rlvr tts`` on an (untrained) tiny model folder."""

import json

import pytest

from rlvr.cli import main

CONFIG = "configs/grpo_arithmetic_tiny.yaml"
SMALL = ["eval.num_problems=4", "rollout.max_new_tokens=4", "logging.progress=false"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from rlvr.models.tiny import save_tiny

    return str(save_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0))


def test_eval_k_compares_checkpoints_writes_reports_and_resumes(tiny_model, tmp_path, capsys):
    out = tmp_path / "ev"
    argv = ["eval", "--checkpoint", tiny_model, "--checkpoint", tiny_model, "--label", "warm", "--label", "rl",
            "--config", CONFIG, "--k", "1,2,4", "--out", str(out), "--json",
            "task.name=arithmetic_chain", *SMALL]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report["checkpoints"]) == {"warm", "rl"} and report["n"] == 4
    s = report["checkpoints"]["warm"]
    for key in ("greedy_accuracy", "pass@1", "pass@4", "cot_pass@4", "maj@2", "mean_accuracy",
                "response_length", "distinct_answers", "distinct_completions", "distinct_2"):
        assert key in s, key
    assert s["cot_pass@4"] <= s["pass@4"] and s["pass@1"] <= s["pass@2"] <= s["pass@4"]
    assert (out / "eval.md").read_text().count("| pass@k |") == 2 and "| cot_pass@k |" in (out / "eval.md").read_text()
    assert (out / "pass_at_k.png").stat().st_size > 1000
    samples = [p / "samples.jsonl" for p in out.iterdir() if p.is_dir()]
    assert len(samples) == 2 and all(len(p.read_text().splitlines()) == 4 for p in samples)
    before = [p.read_text() for p in samples]
    assert main(argv) == 0  # rerun: everything is on disk, nothing is resampled
    assert [p.read_text() for p in samples] == before
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report


def test_eval_without_k_keeps_its_old_output(tiny_model, capsys):
    assert main(["eval", "--checkpoint", tiny_model, "--config", CONFIG, "--json", *SMALL]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"checkpoint", "num_problems", "greedy_accuracy", "sampled_reward"} <= set(out)
    assert main(["eval", "--checkpoint", tiny_model, "--checkpoint", tiny_model, "--config", CONFIG]) == 2


def test_eval_k_rejects_bad_k(tiny_model, tmp_path, capsys):
    base = ["eval", "--checkpoint", tiny_model, "--config", CONFIG, "--out", str(tmp_path), *SMALL]
    assert main(base + ["--k", "1,x"]) == 2
    assert main(base + ["--k", "1,8", "--n", "4"]) == 2
    assert "--n" in capsys.readouterr().err


def test_tts_reports_every_strategy_at_matching_budgets(tiny_model, tmp_path, capsys):
    out = tmp_path / "tts"
    assert main(["tts", "--checkpoint", tiny_model, "--config", CONFIG, "--N", "2", "--K", "2", "--T", "0..2",
                 "--num-problems", "3", "--out", str(out), "--json", *SMALL]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    settings = {(p["strategy"], p["setting"]) for p in report["points"]}
    assert {("rsa", f"N=2,K=2,T={t}") for t in range(3)} <= settings
    assert {("majority", f"N={n}") for n in (2, 4, 6)} <= settings
    assert {("best_of_n (oracle)", f"N={n}") for n in (2, 4, 6)} <= settings
    rsa = sorted((p for p in report["points"] if p["strategy"] == "rsa"), key=lambda p: p["setting"])
    assert all(a["generated_tokens"] < b["generated_tokens"] for a, b in zip(rsa, rsa[1:]))
    assert all(0 <= p["accuracy"] <= 1 for p in report["points"])
    assert (out / "tts.png").stat().st_size > 1000 and (out / "tts.md").exists()
    assert main(["tts", "--checkpoint", tiny_model, "--config", CONFIG, "--strategy", "beam"]) == 2
