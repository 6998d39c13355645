import subprocess
import sys

import pytest

from rlvr.config import ConfigError, load_config


def test_defaults_and_override_types():
    c = load_config("configs/grpo_arithmetic_tiny.yaml", ["trainer.lr=1e-5", "rollout.group_size=4",
                                                          "task.options.max_digits=3", "run.name=x"])
    assert c.trainer.lr == 1e-5 and isinstance(c.trainer.lr, float)
    assert c.rollout.group_size == 4
    assert c.task.options["max_digits"] == 3 and c.task.options["ops"] == "+-"


@pytest.mark.parametrize("override,needle", [
    ("trainer.lrr=1", "unknown field 'trainer.lrr'; allowed here: steps, lr,"),
    ("trainerr.lr=1", "unknown field 'trainerr'; allowed here: run, model,"),
    ("kl.placement=everywhere", "kl.placement = 'everywhere': input should be 'none', 'reward' or 'loss'"),
    ("algorithm.policy_loss=ppo2", "algorithm.policy_loss = 'ppo2': unknown name 'ppo2'; known: "),
    ("algorithm.advantage_estimator=foo", "known: "),
    ("rollout.temperature=0", "rollout.temperature = 0: Input should be greater than 0"),
    ("trainer.lr=fast", "trainer.lr = 'fast'"),
    ("kl.placement=loss", "kl.coef is 0 while kl.placement is 'loss'"),
    ("trainer", "expected key.path=value"),
])
def test_bad_fields_name_the_field_and_the_fix(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config("configs/grpo_arithmetic_tiny.yaml", [override])
    assert needle in str(err.value)
    assert "Traceback" not in str(err.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.yaml")


def test_cli_prints_one_line_not_a_traceback():
    out = subprocess.run([sys.executable, "-m", "rlvr.cli", "train", "--config", "configs/grpo_arithmetic_tiny.yaml",
                          "trainer.lrr=1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("config error: unknown field 'trainer.lrr'")
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
