import pytest
import torch

from rlvr.rollout.base import Rollout
from rlvr.tasks import Problem
from rlvr.experience.batch import (Experience, PromptSampler, concat_experience, keep_informative_groups,
                                   overlong_penalty, truncate_groups)
from rlvr.train.batches import micro_batches, split_groups


def _exp(correct, group, T=3):
    B = len(correct)
    r = Rollout(prompt_ids=torch.zeros(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                completion_ids=torch.arange(B * T).view(B, T), completion_mask=torch.ones(B, T, dtype=torch.long),
                rollout_logp=torch.zeros(B, T), finish_reason=["stop"] * B, prompt_index=torch.tensor(group),
                texts=[str(i) for i in range(B)], policy_version=0, num_generated_tokens=B * T)
    c = torch.tensor(correct, dtype=torch.float)
    return Experience(rollout=r, rewards=c.clone(), reward_components={"correct": c, "reward": c.clone()},
                      group=torch.tensor(group), problems=[Problem(str(g), "") for g in group])


def test_dynamic_sampling_drops_constant_groups_and_keeps_rows_aligned():
    exp = _exp([1, 1, 0, 1, 0, 0, 1, 0], [0, 0, 1, 1, 2, 2, 3, 3])
    kept = keep_informative_groups(exp, exp.reward_components["correct"])
    assert kept.group.tolist() == [1, 1, 3, 3]
    assert kept.rollout.texts == ["2", "3", "6", "7"]
    assert torch.equal(kept.rollout.completion_ids, exp.rollout.completion_ids[[2, 3, 6, 7]])
    assert [p.prompt for p in kept.problems] == ["1", "1", "3", "3"]
    both = concat_experience([kept, keep_informative_groups(_exp([0, 1], [9, 9]), torch.tensor([0.0, 1.0]))], 0)
    assert both.group.tolist() == [1, 1, 3, 3, 9, 9]
    assert truncate_groups(both, 2).group.tolist() == [1, 1, 3, 3]


def test_overlong_penalty_matches_dapo_eq13():
    # L_max = 20, L_cache = 4: no penalty up to 16, then linear to -1 at 20.
    lengths = torch.tensor([0, 16, 17, 18, 20])
    assert overlong_penalty(lengths, 20, 4).tolist() == pytest.approx([0, 0, -0.25, -0.5, -1.0])
    assert overlong_penalty(lengths, 20, 0).tolist() == [0, 0, 0, 0, 0]
    assert overlong_penalty(lengths, 20, 4, factor=2.0)[-1] == -2.0


def test_groups_stay_whole_in_minibatches_and_micro_batches():
    group = torch.tensor([5, 1, 5, 1, 7, 7, 2, 2, 2])
    mbs = split_groups(group, 2, torch.Generator().manual_seed(0))
    assert len(mbs) == 2
    seen = torch.cat([torch.cat(mb) for mb in mbs]).sort().values
    assert seen.tolist() == list(range(9))  # every row exactly once
    for mb in mbs:
        for rows in mb:
            assert len(set(group[rows].tolist())) == 1
            assert len(rows) == int((group == group[rows[0]]).sum())  # the whole group
    chunks = list(micro_batches([torch.tensor([0, 1]), torch.tensor([2, 3, 4]), torch.tensor([5])], size=3))
    assert [c.tolist() for c in chunks] == [[0, 1], [2, 3, 4], [5]]


def test_prompt_sampler_resumes_where_it_stopped():
    problems = [Problem(str(i), "") for i in range(7)]
    a = PromptSampler(problems, seed=3)
    first = a.next(5) + a.next(5)
    b = PromptSampler(problems, seed=3)
    b.next(5)
    c = PromptSampler(problems, seed=3)
    c.load_state_dict(b.state_dict())
    assert c.next(5) == first[5:]
    assert sorted(p.prompt for p in first[:7]) == [str(i) for i in range(7)]  # an epoch is a permutation
