"""With --json, stdout is exactly one JSON document (``rlvr eval --json | jq`` works); status
lines go to stderr."""

import json

import pytest

from rlvr.cli import main

CONFIG = "configs/grpo_arithmetic_tiny.yaml"
SMALL = ["eval.num_problems=3", "rollout.max_new_tokens=3", "logging.progress=false"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from rlvr.models.tiny import save_tiny

    return str(save_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0))


def test_eval_k_json_stdout_is_only_json(tiny_model, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", "--checkpoint", tiny_model, "--label", "warm", "--config", CONFIG, "--k", "1,2",
                 "--out", str(out), "--json", *SMALL]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # the whole of stdout
    assert set(report["checkpoints"]) == {"warm"}
    assert "[warm]" in captured.err and "->" in captured.err and "wrote" in captured.err
    assert captured.out.count("\n") == 1


def test_eval_k_without_json_keeps_status_off_stdout(tiny_model, tmp_path, capsys):
    assert main(["eval", "--checkpoint", tiny_model, "--label", "warm", "--config", CONFIG, "--k", "1",
                 "--out", str(tmp_path / "ev"), *SMALL]) == 0
    captured = capsys.readouterr()
    assert "[warm]" in captured.err and "[warm]" not in captured.out
    assert "| pass@k |" in captured.out and "wrote" in captured.out


def test_plain_eval_json_stdout_is_only_json(tiny_model, capsys):
    assert main(["eval", "--checkpoint", tiny_model, "--config", CONFIG, "--json", *SMALL]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_problems"] == 3 and "greedy_accuracy" in result


def test_tts_json_stdout_is_only_json(tiny_model, tmp_path, capsys):
    assert main(["tts", "--checkpoint", tiny_model, "--config", CONFIG, "--N", "2", "--K", "2", "--T", "0..1",
                 "--num-problems", "2", "--out", str(tmp_path / "tts"), "--json", *SMALL]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["num_problems"] == 2 and report["points"]
    assert "held-out problems" in captured.err and "wrote" in captured.err
