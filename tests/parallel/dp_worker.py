"""One rank of a learner group, launched by ``torchrun`` from tests/parallel/test_data_parallel.py.

``python -m torch.distributed.run --nproc_per_node N tests/parallel/dp_worker.py CASES_JSON``: for each case, load
the model and the experiences the test wrote and train them as a run does: rank 0 drives a
:class:`~rlvr.train.group.GroupLearner` (an update, then the shards gathered into its unsharded copy, bucket by
bucket), the other ranks follow its commands. Rank 0 writes the copy's weights after every update, the
full and sparse weight-sync payloads a run would publish from it, the step metrics, and each rank's skipped steps.
"""

from __future__ import annotations

import copy
import json
import sys

import torch


def run_case(case: dict, dist) -> None:
    from rlvr.config import load_config
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.train.group import GroupLearner, follow_one
    from rlvr.train.learner import Learner
    from rlvr.weights.sync import WeightPublisher

    cfg = load_config(case["config"], case["overrides"])
    if dist.driver or not case.get("meta_init", True):
        model, _ = load_model_and_tokenizer(case["model"])
    else:  # ranks 1..N-1 build on the meta device, as a run does (trainer.dist.meta_init)
        from rlvr.models.load import build_on_meta

        model = build_on_meta(case["model"])
    critics = None
    if cfg.uses_critic():
        from rlvr.train.critic import Critics

        critics = Critics.build(cfg, case["model"], dist=dist)  # sharded like the policy
    if cfg.model.lora.enabled:
        from rlvr.models.lora import apply_lora

        torch.manual_seed(0)  # the adapter's initialisation, as seed_everything does before it in a run
        model = apply_lora(model, cfg.model.lora, base_path=case["model"])
    experiences = torch.load(case["experiences"], weights_only=False)
    if case.get("skip_rebuild"):  # the trap: to_empty leaves rotary inv_freq uninitialised on rank 1
        import rlvr.parallel.data_parallel as dp

        rebuild, dp.rebuild_buffers = dp.rebuild_buffers, lambda model: None
        try:
            Learner(model, cfg, critics, dist=dist)
        except RuntimeError as err:
            if dist.driver:
                torch.save({"error": str(err)}, case["out"])
            return
        finally:
            dp.rebuild_buffers = rebuild
        raise AssertionError("an uninitialised rotary buffer went unnoticed")
    policy = copy.deepcopy(model) if dist.driver else None  # the unsharded copy a run's engine samples from
    learner = Learner(model, cfg, critics, dist=dist)
    group = GroupLearner(learner, dist, policy) if dist.driver else None
    publishers = {"full": WeightPublisher("full"), "sparse": WeightPublisher("sparse", dtype=torch.bfloat16)}
    out = {"states": [], "metrics": [], "payloads": []}
    for step, exp in enumerate(experiences):
        poisoned = case.get("nan_on_rank") == dist.rank and step == case.get("nan_step", 1)
        if poisoned:
            _poison(model)  # a NaN on one rank: every rank must skip this step
        if dist.driver:
            out["metrics"].append(group.update(exp, step))
            group.publish()
        else:
            follow_one(learner, dist)  # the update
            follow_one(learner, dist)  # the gather
        if poisoned:
            _heal(model)
        if dist.driver:
            from rlvr.models.lora import sync_tensors

            out["states"].append({k: v.detach().clone() for k, v in policy.state_dict().items()})
            out["payloads"].append({m: pub.publish(sync_tensors(policy), step + 1) for m, pub in publishers.items()})
    out["skipped_steps"] = dist.gather_objects(learner.skipped_steps)
    if dist.driver:
        group.close()
        torch.save(out, case["out"])
    else:
        assert not follow_one(learner, dist)  # stop


_saved: dict = {}


def _poison(model) -> None:
    """Make this rank's loss NaN for one step: a hook on the first decoder block's output."""
    from rlvr.parallel.data_parallel import decoder_blocks

    block = decoder_blocks(model)[0]
    _saved["hook"] = block.register_forward_hook(
        lambda mod, args, output: (output[0] * float("nan"),) + tuple(output[1:]) if isinstance(output, tuple)
        else output * float("nan"))


def _heal(model) -> None:
    if "hook" in _saved:
        _saved.pop("hook").remove()


def main() -> None:
    from rlvr.parallel import DataParallel

    torch.set_num_threads(1)
    cases = json.loads(open(sys.argv[1]).read())
    group = None
    for case in cases:
        group = DataParallel.init(case["engine"], timeout_s=120)
        group.engine = case["engine"]
        group.mixed_precision = case.get("mixed_precision", "none")
        run_case(case, group)
        group.arrive(f"case {case['name']}")
    if group is not None:
        group.close()


if __name__ == "__main__":
    main()
