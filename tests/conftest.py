"""Test-wide settings: everything offline, a private warm-start cache, small configs."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Warm starts built by tests go to a temporary cache, never the user's ~/.cache/rlvr."""
    old = os.environ.get("RLVR_CACHE")
    os.environ["RLVR_CACHE"] = str(tmp_path_factory.mktemp("rlvr_cache"))
    yield
    if old is None:
        os.environ.pop("RLVR_CACHE", None)
    else:
        os.environ["RLVR_CACHE"] = old


#: Overrides that make a run take seconds: few prompts, a short warm start, a small eval.
FAST = [
    "task.options={min_digits: 1, max_digits: 2, ops: '+-', num_train: 2000, num_eval: 50}",
    "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=4",
    "trainer.micro_batch_size=8", "trainer.num_minibatches=2",
    "sft.steps=10", "sft.batch_size=16", "sft.warmup_steps=2",
    "eval.num_problems=8", "eval.samples_per_problem=2",
    "logging.progress=false", "logging.plots=false",
]


@pytest.fixture
def fast_overrides():
    return list(FAST)


@pytest.fixture
def fast_config(tmp_path):
    """A function that makes a small, fast Config writing under ``tmp_path``."""
    from rlvr.config import load_config

    def make(*overrides: str):
        return load_config("configs/grpo_arithmetic_tiny.yaml",
                           FAST + [f"run.output_dir={tmp_path / 'runs'}", *overrides])

    return make


@pytest.fixture(scope="session")
def stand_in(tmp_path_factory):
    """``stand_in(name)``: the folder of a real-architecture stand-in for a user's chat model
    (:mod:`rlvr.models.stand_in`: Qwen3- or Qwen2-shaped, random weights, a byte-level BPE tokenizer
    trained on the fly, a ChatML template; ``*_instruct``: eos <|im_end|>; ``*_base``: eos
    <|endoftext|>, both ids in generation_config). Built once per session (about a second each)."""
    from rlvr.models.stand_in import save_stand_in

    root = tmp_path_factory.mktemp("stand_ins")
    built: dict[str, str] = {}

    def get(name: str = "qwen3_instruct") -> str:
        if name not in built:
            built[name] = str(save_stand_in(name, root / name))
        return built[name]

    return get


@pytest.fixture
def arithmetic_experience():
    """``arithmetic_experience(model, tok, n_prompts=4, G=3, max_new_tokens=6)``: one rollout batch of the
    ``arithmetic`` task sampled by the HF engine (seeded), with rewards ``[1, 0, 0.5]`` per group so every
    group has a spread: the input of a learner-update test."""

    def make(model, tok, n_prompts=4, G=3, max_new_tokens=6):
        import torch

        from rlvr.experience.batch import PromptSampler
        from rlvr.experience.producer import PromptDraws, RolloutProducer
        from rlvr.rollout.base import SamplingParams
        from rlvr.rollout.hf import HFRolloutEngine
        from rlvr.tasks import make_task

        task = make_task("arithmetic", num_train=100, num_eval=4)
        producer = RolloutProducer(HFRolloutEngine(model, tok), task,
                                   SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, n=G, seed=2),
                                   n_prompts)
        sampler = PromptSampler(task.problems("train"), 0)
        exp = producer.produce(PromptDraws(sampler.problems, sampler.next_indices), seed=5)
        exp.rewards = torch.tensor([1.0, 0.0, 0.5] * n_prompts)
        return exp

    return make
