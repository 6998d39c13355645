import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.models.load import load_model_and_tokenizer
from rlvr.models.tiny import CHARACTERS, save_tiny


def test_tokenizer_round_trip_through_a_saved_checkpoint(tmp_path):
    save_tiny(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tiny")
    text = "12+7=19\n  -3 * (4) ~ {x}"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert len(ids) == len(text) + 1  # one token per character
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(tok) == len(CHARACTERS) + 4
    # every printable character is its own token, spaces included
    assert tok.decode(tok(" ")["input_ids"], skip_special_tokens=True) == " "


def test_model_loads_back_with_auto_classes_and_matches(tmp_path):
    path = save_tiny(tmp_path / "tiny", seed=3)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "llama"
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n < 4_000_000
    again, _ = load_model_and_tokenizer(path)
    x = torch.tensor([[1, 5, 6, 7]])
    assert torch.equal(model(x).logits, again(x).logits)


def test_unknown_model_path_gives_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="model.path"):
        load_model_and_tokenizer(tmp_path / "nope")
