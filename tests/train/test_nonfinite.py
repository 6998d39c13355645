"""Non-finite steps: an optimizer step whose loss or gradient norm is NaN/inf is skipped (weights,
AdamW state and the LR schedule untouched), logged (``skipped_steps``, a warning line), and
``trainer.max_consecutive_skipped`` of them in a row stop the run with a one-line error, leaving
a checkpoint of the last finite update."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlvr import algorithms as A
from rlvr.algorithms.registry import register_policy_loss
from rlvr.train.learner import NonFiniteStepsError
from rlvr.train.loop import train

pytestmark = pytest.mark.slow

#: call number of the loss (= RL step here: one optimizer step of one micro-batch per step) -> what goes wrong
BAD: dict[int, str] = {}
CALLS = [0]
#: One micro-batch, one minibatch: each RL step is exactly one call of the loss and one optimizer step.
#: The entropy bonus makes every applied step move the weights (the FAST warm start often gets all
#: rewards 0, hence zero advantages), so "untouched" means something.
ONE_STEP = ["algorithm.policy_loss=nan_on_steps", "trainer.micro_batch_size=16", "trainer.num_minibatches=1",
            "trainer.entropy_coef=0.01"]


@pytest.fixture
def nan_loss():
    """The registered loss ``nan_on_steps``: PPO-clip, but NaN / inf / NaN-gradient on chosen steps."""

    @register_policy_loss("nan_on_steps")
    def nan_on_steps(*, logp, old_logp, advantages, mask, **kw):
        CALLS[0] += 1
        loss, metrics = A.POLICY_LOSSES["vanilla"](logp=logp, old_logp=old_logp, advantages=advantages,
                                                    mask=mask, **kw)
        bad = BAD.get(CALLS[0], BAD.get("rest") if CALLS[0] >= BAD.get("from", 10**9) else None)
        if bad == "nan":
            loss = loss * float("nan")
        elif bad == "inf":  # an infinite loss with a finite (zero) extra gradient
            loss = loss + torch.tensor(float("inf"))
        elif bad == "nan_grad":  # a finite loss whose gradient is NaN: d sqrt(x)/dx at 0, times 0
            loss = loss + torch.sqrt((logp * 0).sum().clamp(min=0))
        return loss, metrics

    BAD.clear()
    CALLS[0] = 0
    yield BAD
    A.POLICY_LOSSES.pop("nan_on_steps", None)
    A.TRUST_REGION_LOSSES.discard("nan_on_steps")


def _ckpt(run_dir, step):
    d = run_dir / "checkpoints" / f"step_{step:06d}"
    return load_file(str(d / "model.safetensors")), torch.load(d / "trainer_state.pt", weights_only=False)["learner"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_optimizer(a: dict, b: dict) -> bool:
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    return sa.keys() == sb.keys() and all(
        sa[p].keys() == sb[p].keys() and all(torch.equal(torch.as_tensor(sa[p][k]), torch.as_tensor(sb[p][k]))
                                             for k in sa[p]) for p in sa)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "reward_mean" in line]


def test_non_finite_steps_are_skipped_and_leave_everything_untouched(fast_config, nan_loss):
    nan_loss.update({2: "nan", 3: "inf", 4: "nan_grad"})
    lines = []
    result = train(fast_config(*ONE_STEP, "trainer.steps=5", "logging.checkpoint_every=1",
                               "logging.keep_checkpoints=10"), log=lines.append)
    d = result.run_dir
    (w1, s1), (w2, s2), (w3, s3), (w4, s4), (w5, s5) = (_ckpt(d, k) for k in range(1, 6))
    for w, s in ((w2, s2), (w3, s3), (w4, s4)):  # NaN loss, inf loss, NaN gradient: no update at all
        assert _same(w, w1) and _same_optimizer(s, s1)
        assert s["scheduler"] == s1["scheduler"]  # the LR schedule does not advance on a skipped step
    assert not _same(w5, w4) and not _same_optimizer(s5, s4)  # a finite step trains again
    assert s5["skipped_steps"] == 3 and s5["consecutive_skipped"] == 0
    records = _records(d)
    assert [r["skipped_steps"] for r in records] == [0, 1, 2, 3, 3]
    lr = [r["lr"] for r in records]
    assert lr[0] == lr[1] == lr[2] == lr[3] < lr[4]  # warm-up: the 2nd applied update is the 5th step
    warnings = [line for line in lines if line.startswith("warning: step")]
    assert [w.split(":")[1].strip() for w in warnings] == ["step 2", "step 3", "step 4"]
    assert "1 optimizer step(s) skipped for a non-finite loss or gradient norm" in warnings[0]
    assert "3 in a row, the run stops at 5 (trainer.max_consecutive_skipped)" in warnings[2]


def test_k_consecutive_non_finite_steps_stop_the_run_with_one_line(fast_config, fast_overrides, nan_loss, tmp_path,
                                                                   capsys):
    from rlvr.cli import main

    nan_loss.update({"from": 2, "rest": "nan"})  # every step from the 2nd on
    out = tmp_path / "cli_runs"
    rc = main(["train", "--config", "configs/grpo_arithmetic_tiny.yaml", *fast_overrides, *ONE_STEP,
               f"run.output_dir={out}", "run.name=nan", "trainer.steps=8", "logging.checkpoint_every=5", "trainer.max_consecutive_skipped=3"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning:")]
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: stopped at step 4: 3 optimizer steps in a row had a NaN/inf "
                                               "loss or gradient norm and were skipped"), err
    d = out / "nan"
    assert "step_000004 holds the weights and optimizer state of the last finite update" in err[0]
    assert [p.name for p in (d / "checkpoints").iterdir()] == ["step_000004"]
    records = _records(d)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["skipped_steps"] == 3

    # the checkpoint holds the last finite update (step 1): replaying step 1 alone gives the same weights
    nan_loss.clear()
    one = train(fast_config(*ONE_STEP, "trainer.steps=1", "run.name=one"), log=lambda *_: None).run_dir
    (w4, s4), (w1, s1) = _ckpt(d, 4), _ckpt(one, 1)
    assert _same(w4, w1) and _same_optimizer(s4, s1) and s4["scheduler"] == s1["scheduler"]
    assert s4["consecutive_skipped"] == 3  # checkpointed: a resume keeps counting


def test_the_stop_is_a_named_value_error():
    assert issubclass(NonFiniteStepsError, ValueError)
