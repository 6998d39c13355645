"""A learner group (trainer.dist) computes the single-process update.

One ``torchrun`` launch of 2 ranks (gloo, 1 thread each; tests/parallel/dp_worker.py) trains several cases on
the same experiences as a single-process :class:`~rlvr.train.learner.Learner` in this process, as a run does:
rank 0 drives a :class:`~rlvr.train.group.GroupLearner` and gathers the shards into its unsharded copy after each
update, rank 1 builds the model on the meta device and follows. Cases: DDP and FSDP2 on GRPO with uneven work per
rank (5 groups over 2 ranks, micro-batches of one group, one group with zero advantage), FSDP2 on PPO with a
sharded critic, on LoRA and on the Qwen3-shaped stand-in (BPE tokenizer, chat template), a NaN on one rank, and a
rank that skips rebuilding the rotary buffers. A launch costs about 10 s of start-up, so every case shares it.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
#: 5 prompts x 3 completions: rank 0 trains 3 groups, rank 1 two (one of them all-equal rewards: zero advantage)
GRPO = ["trainer.micro_batch_size=3", "trainer.num_minibatches=2", "trainer.lr=1e-3", "run.seed=0",
        "trainer.dist.bucket_mb=0.5"]  # the gather after each update in ~20 buckets
CASES = {
    # one minibatch of 5 groups: rank 0 sums 3 micro-batches, rank 1 two, so the replay's order of sums matters
    "grpo_ddp": ("ddp", "configs/grpo_arithmetic_tiny.yaml", GRPO + ["trainer.num_minibatches=1"]),
    # no clipping in effect: FSDP2 sums the norm from the shards, which rounds differently (the replay is exact)
    "grpo_fsdp2": ("fsdp2", "configs/grpo_arithmetic_tiny.yaml", GRPO + ["trainer.max_grad_norm=1e9",
                                                                            "trainer.num_minibatches=1"]),
    "ppo_fsdp2": ("fsdp2", "configs/ppo_arithmetic_tiny.yaml",
                  GRPO + ["critic.warmup_steps=0"]),
    "lora_fsdp2": ("fsdp2", "configs/grpo_arithmetic_tiny.yaml",
                   GRPO + ["model.lora.enabled=true", "model.lora.r=4"]),
    "nan_fsdp2": ("fsdp2", "configs/grpo_arithmetic_tiny.yaml", GRPO),
    # FSDP2's mixed precision (bf16 compute, fp32 reductions and master weights), as on a GPU
    "bf16_fsdp2": ("fsdp2", "configs/grpo_arithmetic_tiny.yaml", GRPO),
    # rank 1 builds on the meta device but skips rebuilding the rotary buffers: the check must catch it
    "unbuilt_rotary_fsdp2": ("fsdp2", "configs/grpo_arithmetic_tiny.yaml", GRPO),
    # a real architecture: the Qwen3-shaped stand-in (byte-level BPE, ChatML template, untied head, q/k norms)
    "qwen3_fsdp2": ("fsdp2", "configs/grpo_arithmetic_tiny.yaml", GRPO),
}
#: cases on the Qwen3 stand-in (its own model folder and experiences); the others use the tiny model
QWEN3 = {"qwen3_fsdp2", "unbuilt_rotary_fsdp2"}
#: rank 1 builds the model on the meta device in every case (as a run does) except these: it loads model.path
EAGER = {"grpo_ddp"}
STEPS = 2  # 2 updates of 2 minibatches: 4 optimizer steps


def _experiences(model, tok, n: int) -> list:
    from rlvr.experience.batch import PromptSampler
    from rlvr.experience.producer import PromptDraws, RolloutProducer
    from rlvr.rollout.base import SamplingParams
    from rlvr.rollout.hf import HFRolloutEngine
    from rlvr.tasks import make_task

    task = make_task("arithmetic", num_train=200, num_eval=10)
    producer = RolloutProducer(HFRolloutEngine(model, tok), task,
                               SamplingParams(temperature=1.0, max_new_tokens=5, n=3, seed=2), 5)
    sampler = PromptSampler(task.problems("train"), 0)
    out = []
    for i in range(n):
        exp = producer.produce(PromptDraws(sampler.problems, sampler.next_indices), seed=10 + i)
        exp.rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.5, 1.0, 0.0])
        out.append(exp)
    return out


def _single_process(case: str, model_path: str, experiences: list) -> list[dict]:
    from rlvr.config import load_config
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.train.learner import Learner

    _, config, overrides = CASES[case]
    cfg = load_config(config, overrides)
    model, _ = load_model_and_tokenizer(model_path)
    if cfg.model.lora.enabled:
        from rlvr.models.lora import apply_lora

        torch.manual_seed(0)  # the adapter's initialisation, as seed_everything does before it in a run
        model = apply_lora(model, cfg.model.lora, base_path=model_path)
    critics = None
    if cfg.uses_critic():
        from rlvr.train.critic import Critics

        critics = Critics.build(cfg, model_path)
    learner = Learner(model, cfg, critics)
    if not experiences:  # the starting weights
        return [{k: v.detach().clone() for k, v in model.state_dict().items()}]
    states = []
    for step, exp in enumerate(experiences):
        learner.update(copy.deepcopy(exp), step)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return states


@pytest.fixture(scope="module")
def group_run(tmp_path_factory):
    """Launch 2 ranks once over every case; returns ``{case: (model_path, experiences, rank 0's output)}``."""
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.stand_in import save_stand_in
    from rlvr.models.tiny import save_tiny

    tmp = tmp_path_factory.mktemp("dp")
    inputs = {}
    for kind, path in (("tiny", save_tiny(tmp / "tiny", seed=2)), ("qwen3", save_stand_in("qwen3_instruct", tmp / "qwen3"))):
        model, tok = load_model_and_tokenizer(str(path))
        torch.manual_seed(0)
        experiences = _experiences(model, tok, STEPS)
        torch.save(experiences, tmp / f"{kind}_experiences.pt")
        inputs[kind] = (str(path), experiences, str(tmp / f"{kind}_experiences.pt"))
    cases = []
    for name, (engine, config, overrides) in CASES.items():
        model_path, _, exp_file = inputs["qwen3" if name in QWEN3 else "tiny"]
        cases.append({"name": name, "engine": engine, "config": config, "overrides": overrides, "model": model_path,
                      "experiences": exp_file, "out": str(tmp / f"{name}.pt"),
                      "meta_init": name not in EAGER, "skip_rebuild": name.startswith("unbuilt"),
                      "mixed_precision": "bf16" if name.startswith("bf16") else "none",
                      **({"nan_on_rank": 1, "nan_step": 0} if name.startswith("nan") else {})})
    (tmp / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "tests/parallel/dp_worker.py"), str(tmp / "cases.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return {c["name"]: (c["model"], inputs["qwen3" if c["name"] in QWEN3 else "tiny"][1],
                        torch.load(c["out"], weights_only=False)) for c in cases}


class _Replay:
    """This process standing in for a group of two ranks (what the learner asks of its group): it runs rank 0's
    micro-batches, sets their gradient aside when rank 1's first one starts, and adds it back before the
    optimizer step, which is what the group's reduction computes (a sum of two floats does not depend on
    their order)."""

    engine, rank, world_size, driver = "replay", 0, 2, True

    def __init__(self):
        self.calls, self.first, self.stashed = 0, 0, {}

    def shard(self, model):
        return model

    def gradient_sync(self, model, sync):  # called before each micro-batch
        self.calls += 1
        if self.calls == self.first + 1:  # rank 1's first micro-batch: rank 0's gradient set aside
            self.stashed = {p: p.grad for p in model.parameters() if p.grad is not None}
            for p in self.stashed:
                p.grad = None

    def all_true(self, flag):
        return flag

    def gather_objects(self, obj):
        return [obj, ({}, 0.0)]

    def shares(self, items):
        return [items[r::2] for r in range(2)]

    def peak_memory_mb(self):
        return 0.0


def _replay(case: str, model_path: str, experiences: list) -> tuple[list, list]:
    """One process replaying the two ranks' micro-batches (:class:`_Replay`): the weights after each update and
    the payloads a weight publisher makes of them."""
    from rlvr.config import load_config
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.train.learner import Learner
    from rlvr.weights.sync import WeightPublisher

    class ReplayLearner(Learner):
        def _rank_chunks(self, exp, mb_groups):  # rank 0's micro-batches (padded as in the group), then rank 1's
            per_rank = [list(self._row_chunks(exp, share)) if share else [] for share in self.dist.shares(mb_groups)]
            n = max(len(c) for c in per_rank)
            self.dist.calls, self.dist.first = 0, n
            return [i for c in per_rank for i in c + [None] * (n - len(c))]

        def optimizer_step(self, finite):
            for p, g in self.dist.stashed.items():
                p.grad = g if p.grad is None else g + p.grad
            self.dist.stashed = {}
            return super().optimizer_step(finite)

    _, config, overrides = CASES[case]
    cfg = load_config(config, overrides)
    torch.set_num_threads(1)  # as each rank
    model, _ = load_model_and_tokenizer(model_path)
    learner = ReplayLearner(model, cfg, None, dist=_Replay())
    publishers = {"full": WeightPublisher("full"), "sparse": WeightPublisher("sparse", dtype=torch.bfloat16)}
    states, payloads = [], []
    for step, exp in enumerate(experiences):
        learner.update(copy.deepcopy(exp), step)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        payloads.append({m: pub.publish(model.state_dict(), step + 1) for m, pub in publishers.items()})
    return states, payloads


def _payload_bytes(payload) -> tuple:
    """Everything a payload carries, as bytes: its counts and every patch's name, kind, shape, values, indices."""
    def raw(t):
        return None if t is None else t.contiguous().view(torch.uint8).numpy().tobytes()

    return (payload.version, payload.base_version, payload.nbytes, payload.dense_nbytes, payload.changed,
            payload.numel, [[(p.name, p.kind, p.shape, raw(p.values), raw(p.indices)) for p in bucket]
                            for bucket in payload.buckets])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["grpo_ddp", "grpo_fsdp2"])
def test_two_ranks_equal_a_one_process_replay_of_their_micro_batches(group_run, case):
    """Bit for bit: the weights after each update, and the full and sparse (bf16) payloads published from
    them, equal a single process that runs rank 0's micro-batches, then rank 1's, and steps on the sum."""
    model_path, experiences, output = group_run[case]
    states, payloads = _replay(case, model_path, experiences)
    for step in range(STEPS):
        assert _max_diff(output["states"][step], states[step]) == 0.0, (case, step)
        for method in ("full", "sparse"):
            assert _payload_bytes(output["payloads"][step][method]) == _payload_bytes(payloads[step][method])
    assert output["payloads"][1]["sparse"].base_version == 1  # the second publication is a sparse patch


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["grpo_ddp", "grpo_fsdp2", "ppo_fsdp2", "lora_fsdp2", "qwen3_fsdp2"])
def test_two_ranks_compute_the_single_process_update(group_run, case):
    model_path, experiences, output = group_run[case]
    reference = _single_process(case, model_path, experiences)
    for step in range(STEPS):
        assert _max_diff(output["states"][step], reference[step]) < 2e-6, (case, step)
    start = _single_process(case, model_path, [])[0]
    assert _max_diff(output["states"][-1], start) > 1e-4  # training moved the weights
    assert output["skipped_steps"] == [0, 0]


@pytest.mark.slow
def test_a_nan_on_one_rank_makes_every_rank_skip(group_run):
    model_path, _, out = group_run["nan_fsdp2"]
    # rank 1's NaN in the first update reaches both of its optimizer steps (2 minibatches): every rank skipped both
    assert out["skipped_steps"] == [2, 2]
    assert out["metrics"][0]["skipped_steps"] == 2 and out["metrics"][1]["skipped_steps"] == 2
    start = _single_process("nan_fsdp2", model_path, [])[0]
    assert _max_diff(out["states"][0], start) == 0.0  # the poisoned update left the weights as they were
    assert _max_diff(out["states"][1], out["states"][0]) > 1e-4  # and the next update trains again


def test_the_config_offers_every_engine_the_group_has():
    import typing

    from rlvr.config import DistSection
    from rlvr.parallel import DIST_ENGINES

    assert typing.get_args(DistSection.model_fields["engine"].annotation) == DIST_ENGINES


@pytest.mark.slow
def test_an_uninitialised_rotary_buffer_is_caught(group_run):
    """Rank 1 built the Qwen3 stand-in on the meta device and skipped rebuilding its non-persistent buffers
    (``to_empty`` leaves rotary ``inv_freq`` uninitialised; no state dict carries it): every rank stops, naming
    the buffers. In every other case rank 1 built on meta too, rebuilt them, and matched one process."""
    err = group_run["unbuilt_rotary_fsdp2"][2]["error"]
    assert "learner rank 1" in err and "model.rotary_emb.inv_freq" in err and "trainer.dist.meta_init=false" in err


@pytest.mark.slow
def test_mixed_precision_trains_fp32_master_weights_along_the_fp32_update(group_run):
    """bf16 compute (FSDP2's MixedPrecisionPolicy, as on a GPU) keeps fp32 master weights and moves them the way
    fp32 training does: AdamW moves every weight by about the learning rate, so the test is the direction of the
    whole update (cosine with the fp32 update), not its largest element."""
    model_path, experiences, out = group_run["bf16_fsdp2"]
    start = _single_process("bf16_fsdp2", model_path, [])[0]
    fp32 = _single_process("bf16_fsdp2", model_path, experiences)[-1]
    bf16 = out["states"][-1]
    assert all(v.dtype == torch.float32 for v in bf16.values())  # master weights stay fp32
    d16 = torch.cat([(bf16[k] - start[k]).flatten() for k in start])
    d32 = torch.cat([(fp32[k] - start[k]).flatten() for k in start])
    cos = float(torch.nn.functional.cosine_similarity(d16, d32, dim=0))
    print(f"bf16 vs fp32 update after {STEPS} updates: cosine {cos:.4f}, norms {d16.norm():.4f} / {d32.norm():.4f}")
    assert 0.9 < cos < 1 - 1e-6 and abs(float(d16.norm() / d32.norm()) - 1) < 0.1  # (< 1 - 1e-6: bf16 did compute)
    assert out["skipped_steps"] == [0, 0]
