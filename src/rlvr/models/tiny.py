"""The built-in tiny model: a Llama-architecture causal LM with a character-level tokenizer.

Both are real Hugging Face objects, saved as a checkpoint folder and loaded back with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` exactly like any
other model. The model type is ``llama`` on purpose: a ``qwen2`` config makes AutoTokenizer
replace a saved character-level tokenizer with Qwen2's byte-level one (spaces vanish on reload).
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers import Regex
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
#: Printable ASCII (space to '~') plus newline: 96 characters; with 4 specials, 100 tokens.
CHARACTERS = tuple(c for c in string.printable if c.isprintable() or c == "\n")

#: Architecture of the built-in model (about 2M parameters with the 100-token vocabulary).
TINY_ARCH = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: one token per printable ASCII character.

    A BOS token is prepended to every encoded text (as Llama tokenizers do); EOS marks the end of
    a completion. Characters outside the vocabulary map to ``<unk>``.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", clean_up_tokenization_spaces=False, model_max_length=512)


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **arch) -> LlamaForCausalLM:
    """A freshly initialised Llama causal LM sized for ``tokenizer`` (``arch`` overrides TINY_ARCH)."""
    import torch

    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True, **{**TINY_ARCH, **arch})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny(path: str | Path, seed: int = 0, **arch) -> Path:
    """Create the built-in tiny model and tokenizer and save them as a HF checkpoint folder."""
    path = Path(path)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed, **arch)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
