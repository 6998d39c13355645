"""Stand-ins for a user's Hugging Face chat model, built in code in seconds (no weights committed).

    path = save_stand_in("qwen3_instruct", "/tmp/qwen3")   # an ordinary HF folder: from_pretrained loads it

What a user brings is a real architecture with a subword tokenizer and a chat template, not the
built-in character model. These stand-ins have exactly those traits at random weights:

* **architectures**: ``qwen3`` (grouped-query attention, RMSNorm on queries and keys, tied embeddings)
  and ``qwen2`` (attention biases on q/k/v, untied embeddings), small enough for a CPU test;
* **a byte-level BPE tokenizer trained on the fly** with ``tokenizers`` on arithmetic text and
  ChatML turns: numbers become multi-character tokens ("123" is one token, not three), a space is
  part of the following word (``Ġ``), and ``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>`` are
  special tokens;
* **a ChatML chat template** (Qwen2.5/Qwen3's turn format) in ``tokenizer_config.json``;
* **both end-of-sequence conventions** of real checkpoints:
  ``instruct`` -- ``eos_token`` is ``<|im_end|>`` (Qwen2.5/Qwen3-Instruct);
  ``base`` -- ``eos_token`` is ``<|endoftext|>`` while a chat turn ends with ``<|im_end|>``, and
  ``generation_config.eos_token_id`` lists both ids (Qwen2.5/Qwen3 base checkpoints).

The tokenizer is saved as a ``PreTrainedTokenizerFast`` (``tokenizer.json``), as a user's own trained
tokenizer would be; :data:`STAND_INS` names the four combinations.
"""

from __future__ import annotations

import random
from pathlib import Path

__all__ = ["CHATML_TEMPLATE", "CHATML_TOOLS_TEMPLATE", "STAND_INS", "build_bpe_tokenizer", "build_stand_in", "corpus_lines", "save_stand_in"]

#: Qwen's ChatML turn format: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message, then the
#: generation prompt ``<|im_start|>assistant\\n``.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: ChatML with tools, in the format Qwen2.5/Qwen3 templates render: the tools' JSON schemas in the system turn, an
#: assistant's structured ``tool_calls`` as ``<tool_call>`` blocks, and consecutive ``tool`` messages as one user turn
#: of ``<tool_response>`` blocks. A conversation without tools renders exactly as :data:`CHATML_TEMPLATE`.
CHATML_TOOLS_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions. Their signatures, within <tools></tools>:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nTo call a function, write a JSON object with its name and arguments within "
    "<tool_call></tool_call> tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}"
    "\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') }}"
    "{%- for call in (message.tool_calls or []) %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call.function.name + '\", \"arguments\": ' "
    "+ (call.function.arguments | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

#: eos convention -> (the tokenizer's eos_token, the ids' tokens in generation_config.eos_token_id)
CONVENTIONS = {
    "instruct": ("<|im_end|>", ("<|im_end|>",)),
    "base": ("<|endoftext|>", ("<|endoftext|>", "<|im_end|>")),
}

#: name -> (model_type, eos convention)
STAND_INS = {
    "qwen3_instruct": ("qwen3", "instruct"),
    "qwen3_base": ("qwen3", "base"),
    "qwen2_instruct": ("qwen2", "instruct"),
    "qwen2_base": ("qwen2", "base"),
}


def _qwen3(common: dict, shape: dict):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM, Qwen3Config(tie_word_embeddings=True, attention_bias=False, **common, **shape)


def _qwen2(common: dict, shape: dict):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = {k: v for k, v in shape.items() if k != "head_dim"}
    config = Qwen2Config(tie_word_embeddings=False, **common, **shape)
    config.head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    return Qwen2ForCausalLM, config


def _random_biases(model) -> None:
    """Qwen2's q/k/v biases start at zero in HF's init: make them matter."""
    import torch

    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.02)


#: model_type -> (builder of (model class, config), what to do to the fresh weights)
ARCHITECTURES = {"qwen3": (_qwen3, None), "qwen2": (_qwen2, _random_biases)}

#: small enough for a CPU test, shaped like the real thing (GQA: 4 query heads share 2 key/value heads)
ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rope_theta=10000.0)


def _corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """Text the BPE merges are learned from: arithmetic in words and digits, in ChatML turns."""
    rng = random.Random(seed)
    words = ("What is the answer to this question? Compute the value and reply with a number only. "
             "Answer with a number. The result is Think step by step about the sum product difference")
    lines = [words]
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice("+-*")
        value = a + b if op == "+" else a - b if op == "-" else a * b
        lines.append(f"<|im_start|>user\nWhat is {a} {op} {b}?<|im_end|>\n<|im_start|>assistant\n{value}<|im_end|>\n")
        lines.append(f"{a}{op}{b}={value} and {value} is the answer to {a} {op} {b}.")
    return lines


def corpus_lines(vocab_size: int) -> int:
    """Lines of :func:`_corpus` that teach ``vocab_size`` tokens: 3000 (about 5400 tokens' worth) up to
    5000 tokens, else 3 per token (32k: 98k lines, ~4 s; 152k: 456k lines, ~15 s to train)."""
    return 3000 if vocab_size <= 5000 else 3 * vocab_size


def build_bpe_tokenizer(vocab_size: int = 1200, eos: str = "<|im_end|>", seed: int = 0, model_max_length: int = 512):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained here, with the ChatML template.

    ``eos`` is the tokenizer's ``eos_token`` (``<|im_end|>``: instruct; ``<|endoftext|>``: base).
    The pad token is ``<|endoftext|>`` as in Qwen's tokenizers; there is no BOS token. A large
    ``vocab_size`` (32k, 152k: realistic LM heads, benchmarks/scaling.py) is reached exactly, from a
    corpus that grows with it (:func:`corpus_lines`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if eos not in SPECIALS:
        raise ValueError(f"eos must be one of {SPECIALS}, got {eos!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # all 256 bytes, as real byte-level vocabularies; below that (a vocabulary of ~100, like the built-in
    # tiny model's) only the bytes the corpus uses, so text outside it cannot be encoded
    alphabet = pre_tokenizers.ByteLevel.alphabet() if vocab_size >= 256 + len(SPECIALS) else []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=alphabet)
    tok.train_from_iterator(_corpus(seed, corpus_lines(vocab_size)), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE,
        additional_special_tokens=[s for s in SPECIALS if s not in (eos, "<|endoftext|>")],
        clean_up_tokenization_spaces=False, model_max_length=model_max_length)


def build_stand_in(name: str = "qwen3_instruct", seed: int = 0, vocab_size: int = 1200, **arch):
    """(model, tokenizer) of the stand-in ``name`` (a key of :data:`STAND_INS`), random weights;
    ``vocab_size`` tokens in the BPE tokenizer and the model's embedding, ``arch`` overrides :data:`ARCH`."""
    import torch
    from transformers import GenerationConfig

    if name not in STAND_INS:
        raise ValueError(f"unknown stand-in {name!r}; choose one of {', '.join(STAND_INS)}")
    model_type, convention = STAND_INS[name]
    eos, eos_tokens = CONVENTIONS[convention]
    shape = {**ARCH, **arch}
    tokenizer = build_bpe_tokenizer(vocab_size, eos=eos, seed=seed, model_max_length=shape["max_position_embeddings"])
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    common = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, bos_token_id=None)
    build, adjust = ARCHITECTURES[model_type]
    cls, config = build(common, shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
        if adjust is not None:
            adjust(model)
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in eos_tokens],
                                               pad_token_id=pad, bos_token_id=None)
    return model, tokenizer


def save_stand_in(name: str, path: str | Path, seed: int = 0, vocab_size: int = 1200, **arch) -> Path:
    """Build the stand-in ``name`` and save it as an HF checkpoint folder at ``path``."""
    path = Path(path)
    model, tokenizer = build_stand_in(name, seed=seed, vocab_size=vocab_size, **arch)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":  # python -m rlvr.models.stand_in qwen3_base /tmp/qwen3_base
    import sys

    print(save_stand_in(sys.argv[1], sys.argv[2]))
