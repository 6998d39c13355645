"""rlvr.models.stand_in at realistic vocabulary sizes (benchmarks/vs_trl.py's W3, benchmarks/scaling.py):
the tokenizer reaches exactly the size asked for, stays a real subword tokenizer, and the model's
embedding matches it; the default-size fixture the other tests use is unchanged."""

from __future__ import annotations

import functools

import pytest

from rlvr.models.stand_in import build_bpe_tokenizer, build_stand_in, corpus_lines

@functools.cache
def _bpe(vocab_size: int):
    """Built once per size for this module (the 32k one takes seconds); the tests only read it."""
    return build_bpe_tokenizer(vocab_size)


TEXT = "<|im_start|>user\nWhat is 123 + 4567?<|im_end|>\n<|im_start|>assistant\n4690<|im_end|>\n"


@pytest.mark.parametrize("vocab_size", [100, 32768])
def test_the_vocabulary_has_exactly_the_size_asked_for_and_round_trips(vocab_size):
    tok = _bpe(vocab_size)
    assert len(tok) == vocab_size
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == TEXT
    assert max(ids) < vocab_size
    # the specials are single tokens at every size
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1


def test_a_large_vocabulary_merges_more_than_a_small_one():
    small, large = _bpe(100), _bpe(32768)
    n_small = len(small("12+7*3-45=12+7=19;19*3=57;57-45=12", add_special_tokens=False)["input_ids"])
    n_large = len(large("12+7*3-45=12+7=19;19*3=57;57-45=12", add_special_tokens=False)["input_ids"])
    assert n_large < n_small  # "45", "57", "19" are single tokens only in the large vocabulary
    assert large.tokenize(" 4567")[0].startswith("Ġ")  # byte-level: the space belongs to the next word


def test_the_default_fixture_is_unchanged():
    # the size every real-models test uses: the corpus is not grown for it (so its merges stay the same)
    assert corpus_lines(1200) == 3000
    tok = build_bpe_tokenizer()
    assert len(tok) == 1200
    # pinned from the tokenizer before the vocabulary size became an argument
    assert tok.tokenize("What is 123 + 456?") == ["What", "Ġis", "Ġ1", "23", "Ġ+", "Ġ4", "56", "?"]
    assert tok("<|im_start|>user\nWhat is 12 * 7?<|im_end|>")["input_ids"] == [1, 289, 201, 283, 267, 408, 295, 303, 33, 2]


def test_the_model_embedding_and_positions_follow_the_arguments():
    model, tok = build_stand_in("qwen3_instruct", vocab_size=300, max_position_embeddings=1024)
    assert model.config.vocab_size == len(tok) == 300
    assert model.get_input_embeddings().weight.shape[0] == 300
    assert tok.model_max_length == model.config.max_position_embeddings == 1024
