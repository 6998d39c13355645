"""The tiny preset on any reasoning-gym dataset: the text every question shares is found and dropped.

For a dataset without tuned settings the shared lead-in and tail are detected from the train questions
(:func:`rlvr.tasks.reasoning_gym.common_lead_in`), cut at whitespace so no varying content is touched; the
verifier still scores against the dataset's own entry, so the reference answers score 1 on the shortened
prompts, and ``preset=null`` keeps reasoning-gym's text.
"""

from __future__ import annotations

import pytest

from rlvr.tasks.reasoning_gym import ReasoningGymTask, common_lead_in

#: dataset -> text its questions start with (written here from reasoning-gym's templates, not detected)
LEAD_INS = {
    "gcd": "Find the Greatest Common Divisor (GCD) of these numbers: ",
    "count_bits": "How many 1 bits are there in the binary representation of the number ",
    "spell_backward": "Spell this word backward (example: sun -> nus): ",
    "leg_counting": "Your task is to count how many legs there are in total when given a list of animals.",
    "prime_factorization": "Find the prime factorization of ",
}


def test_the_shared_text_is_cut_at_whitespace():
    qs = ["Compute (1+2) now.", "Compute (3*4) now.", "Compute (5-6) now."]
    assert common_lead_in(qs) == ("Compute ", " now.")  # not "Compute (": the bracket belongs to the content
    assert common_lead_in(["Sum 12 and 13", "Sum 14 and 15"]) == ("Sum ", "")  # "1" is shared, but content
    assert common_lead_in(["same text", "same text"]) == ("same ", "")  # never the whole question
    assert common_lead_in(["only one"]) == ("", "")
    assert common_lead_in(["abc", "xyz"]) == ("", "")


@pytest.mark.parametrize("dataset", sorted(LEAD_INS))
def test_lead_in_found_and_dropped_with_the_verifier_unchanged(dataset):
    task = ReasoningGymTask(dataset, preset="tiny", num_train=200, num_eval=20)
    plain = ReasoningGymTask(dataset, preset=None, num_train=200, num_eval=20)
    prefix, _ = task.lead_in
    assert prefix.startswith(LEAD_INS[dataset]) or LEAD_INS[dataset].startswith(prefix.strip()), prefix
    for short, full in zip(task.problems("train")[:50] + task.problems("eval"), plain.problems("train")[:50]
                           + plain.problems("eval")):
        question = full.meta["entry"]["question"]
        assert short.meta["entry"] == full.meta["entry"]
        assert len(short.prompt) < len(question) and short.prompt in question  # a piece of the original
        assert task.score(short, short.answer)["correct"] == 1.0  # the verifier reads the same entry
        assert question in full.prompt  # preset=null: reasoning-gym's own text
    mean = lambda ps: sum(len(p.prompt) for p in ps) / len(ps)  # noqa: E731
    assert mean(task.problems("train")) < 0.8 * mean(plain.problems("train"))


def test_hand_tuned_presets_keep_their_settings():
    task = ReasoningGymTask("chain_sum", preset="tiny", num_train=20, num_eval=5)
    assert task.lead_in == ("", "") and task.drop_text  # chain_sum's lead-in is listed, not detected
