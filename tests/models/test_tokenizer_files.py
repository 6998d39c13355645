"""The user's tokenizer survives loading, checkpoints and exports unchanged.

* Loading: a saved fast tokenizer (tokenizer.json, a generic ``tokenizer_class`` or none) loads as
  it was saved whatever the model's ``model_type``; transformers 5's AutoTokenizer swaps in
  ``Qwen2Tokenizer`` for a ``qwen2`` config, which splits "123" into one token per digit.
* Saving: checkpoints and exports hold byte-identical copies of the user's tokenizer files; the
  run-time settings rlvr makes (``padding_side="left"``, ``pad_token = eos_token``) never reach disk,
  also when a tokenizer without a source folder is written with ``save_pretrained``.
"""

import json
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from rlvr.models.load import TOKENIZER_FILES, load_model_and_tokenizer, load_tokenizer, set_runtime  # noqa: E402
from rlvr.records.checkpoint import save_checkpoint  # noqa: E402

TEXT = "123 + 456"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MESSAGES = [{"role": "user", "content": "12+345="}]
MODEL_TYPES = ("qwen2", "qwen3", "llama")
#: How the user's folder was saved: by transformers 5 (class TokenizersBackend), by hand as older
#: transformers wrote it (class PreTrainedTokenizerFast, compact JSON, special_tokens_map.json),
#: the same with no tokenizer_class, or the same with the user's own ``padding_side: right`` (which
#: ``save_pretrained`` of the loaded object would overwrite with rlvr's run-time "left").
FORMATS = ("saved", "legacy", "noclass", "right")


def _bpe(pad: bool = True):
    """A byte-level BPE tokenizer trained on arithmetic text: multi-digit tokens, 600 entries."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    lines = []
    for _ in range(300):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        lines += [f"{a}+{b}={a + b}", f"{a} + {b} = {a + b}"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    extra = {"pad_token": "<|endoftext|>"} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", chat_template=CHATML, **extra)


@pytest.fixture(scope="module")
def reference():
    return _bpe()


def _tiny_model(model_type: str, vocab_size: int, eos_id: int):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    arch = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=vocab_size, eos_token_id=eos_id, max_position_embeddings=64)
    config = {"qwen2": lambda: Qwen2Config(**arch), "qwen3": lambda: Qwen3Config(head_dim=16, **arch),
              "llama": lambda: LlamaConfig(**arch)}[model_type]()
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _user_folder(root, reference, model_type: str, fmt: str):
    folder = root / f"{model_type}-{fmt}"
    _tiny_model(model_type, len(reference), reference.eos_token_id).save_pretrained(folder)
    if fmt == "saved":
        reference.save_pretrained(folder)
    else:
        reference.backend_tokenizer.save(str(folder / "tokenizer.json"))
        config = {"clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "model_max_length": 512,
                  "pad_token": "<|endoftext|>"}
        if fmt in ("legacy", "right"):
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
        if fmt == "right":
            config["padding_side"] = "right"
        (folder / "tokenizer_config.json").write_text(json.dumps(config, separators=(",", ":")))  # no newline
        (folder / "special_tokens_map.json").write_text('{"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}')
        (folder / "chat_template.jinja").write_text(CHATML)
    return folder


@pytest.fixture(scope="module")
def user_folders(tmp_path_factory, reference):
    root = tmp_path_factory.mktemp("user_models")
    return {(m, f): _user_folder(root, reference, m, f) for m in MODEL_TYPES for f in FORMATS}


def _tokenizer_files(folder) -> dict:
    names = [*TOKENIZER_FILES, *(p.relative_to(folder).as_posix() for p in folder.glob("additional_chat_templates/*"))]
    return {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}


def _assert_same_files(folder, user):
    want, got = _tokenizer_files(user), _tokenizer_files(folder)
    assert "tokenizer.json" in want and "tokenizer_config.json" in want
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for name in want:
        assert got[name] == want[name], f"{folder / name} differs from the user's {user / name}"
    user_side = json.loads(want["tokenizer_config.json"]).get("padding_side")
    assert json.loads(got["tokenizer_config.json"]).get("padding_side") == user_side  # None: no key


def _assert_same_tokenizer(tok, reference):
    ids = tok(TEXT)["input_ids"]
    assert ids == reference(TEXT)["input_ids"]
    assert len(ids) < sum(c.isdigit() for c in TEXT), ids  # multi-digit tokens survive
    assert tok.decode(ids) == TEXT
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert (tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
            == reference.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True))


# ------------------------------------------------------------------ loading


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_a_saved_fast_tokenizer_loads_as_saved_whatever_the_model_type(user_folders, reference, model_type, fmt):
    folder = user_folders[model_type, fmt]
    assert json.loads((folder / "config.json").read_text())["model_type"] == model_type
    model, tok = load_model_and_tokenizer(folder)
    _assert_same_tokenizer(tok, reference)
    assert tok.padding_side == "left"  # the run-time setting the engines rely on
    assert load_tokenizer(folder)(TEXT)["input_ids"] == reference(TEXT)["input_ids"]
    assert model.get_input_embeddings().weight.shape[0] == len(reference)


def test_a_model_specific_tokenizer_class_still_goes_through_autotokenizer(tmp_path, user_folders):
    """Only generic classes are loaded as PreTrainedTokenizerFast; a named model class is honoured."""
    from transformers import AutoTokenizer

    folder = tmp_path / "named"
    folder.mkdir()
    src = user_folders["llama", "legacy"]
    for name in ("config.json", "tokenizer.json", "special_tokens_map.json", "chat_template.jinja"):
        (folder / name).write_bytes((src / name).read_bytes())
    config = json.loads((src / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GPT2Tokenizer"}))
    assert type(load_tokenizer(folder)) is type(AutoTokenizer.from_pretrained(folder))


# ------------------------------------------------------------------ checkpoints and exports


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_checkpoints_hold_the_users_tokenizer_files_byte_for_byte(tmp_path, user_folders, reference,
                                                                  model_type, fmt):
    user = user_folders[model_type, fmt]
    model, tok = load_model_and_tokenizer(user)
    ckpt = save_checkpoint(tmp_path / "run", 1, model, tok, {"learner": {"x": torch.arange(2)}})
    assert ckpt.name == "step_000001" and not list((tmp_path / "run" / "checkpoints").glob(".tmp_*"))
    _assert_same_files(ckpt, user)
    assert tok.padding_side == "left" and tok.pad_token == "<|endoftext|>"  # the live object is untouched

    # a checkpoint loaded and checkpointed again (resume, a run started from a checkpoint)
    model2, tok2 = load_model_and_tokenizer(ckpt)
    _assert_same_tokenizer(tok2, reference)
    again = save_checkpoint(tmp_path / "run2", 2, model2, tok2, {"learner": {}})
    _assert_same_files(again, user)

    # the source folder gone by the time of the next checkpoint (pruned, moved): the bytes read at load
    import shutil

    shutil.rmtree(ckpt.parent.parent)
    third = save_checkpoint(tmp_path / "run3", 3, model2, tok2, {"learner": {}})
    _assert_same_files(third, user)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_exports_hold_the_users_tokenizer_files_byte_for_byte(tmp_path, user_folders, reference, model_type):
    from rlvr.export import export

    user = user_folders[model_type, "legacy"]
    model, tok = load_model_and_tokenizer(user)
    run = tmp_path / "run"
    save_checkpoint(run, 1, model, tok, {"learner": {}})
    out = export(run, tmp_path / "exported", log=lambda *_: None)
    _assert_same_files(out, user)
    _, reloaded = load_model_and_tokenizer(out)
    _assert_same_tokenizer(reloaded, reference)
    out2 = export(out, tmp_path / "exported_again", log=lambda *_: None)  # an export of an export
    _assert_same_files(out2, user)


def test_a_tokenizer_loaded_without_rlvr_is_copied_from_its_folder(tmp_path, user_folders):
    from transformers import PreTrainedTokenizerFast

    user = user_folders["qwen2", "legacy"]
    model, _ = load_model_and_tokenizer(user)
    tok = PreTrainedTokenizerFast.from_pretrained(str(user))  # name_or_path: the user's folder
    tok.padding_side = "left"
    _assert_same_files(save_checkpoint(tmp_path / "run", 1, model, tok, {"learner": {}}), user)


# ------------------------------------------------------------------ no source folder: save_pretrained


@pytest.mark.parametrize("name_or_path", ["", "someone/some-model"])
def test_without_a_source_folder_rlvrs_runtime_settings_do_not_leak(tmp_path, name_or_path):
    from transformers import AutoTokenizer

    tok = _bpe(pad=False)  # built in memory, no pad token, padding on the right
    tok.name_or_path = name_or_path
    assert tok.pad_token is None and tok.padding_side == "right"
    set_runtime(tok, pad_token=tok.eos_token)  # what load_model_and_tokenizer does
    set_runtime(tok, padding_side="left")
    model = _tiny_model("llama", len(tok), tok.eos_token_id)
    ckpt = save_checkpoint(tmp_path / "run", 1, model, tok, {"learner": {}})
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert config.get("padding_side") != "left" and config.get("pad_token") is None
    reloaded = AutoTokenizer.from_pretrained(ckpt)
    assert reloaded.padding_side == "right" and reloaded.pad_token is None
    assert reloaded(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    assert tok.padding_side == "left" and tok.pad_token == "<|im_end|>"  # the run's object keeps them
    # and the checkpoint, loaded by rlvr and saved again, keeps the user's values too
    model2, tok2 = load_model_and_tokenizer(ckpt)
    again = save_checkpoint(tmp_path / "run2", 2, model2, tok2, {"learner": {}})
    assert _tokenizer_files(again) == _tokenizer_files(ckpt)


def test_a_users_own_left_padding_is_kept(tmp_path):
    """padding_side="left" chosen by the user (not by rlvr) is theirs and is saved."""
    tok = _bpe()
    tok.padding_side = "left"
    tok.init_kwargs["padding_side"] = "left"
    set_runtime(tok, padding_side="left")
    save_checkpoint(tmp_path / "run", 1, _tiny_model("llama", len(tok), tok.eos_token_id), tok, {"learner": {}})
    config = json.loads((tmp_path / "run" / "checkpoints" / "step_000001" / "tokenizer_config.json").read_text())
    assert config["padding_side"] == "left"


def test_tokens_added_after_loading_are_saved(tmp_path, user_folders):
    """The user's bytes describe the tokenizer as loaded; one that has changed since is re-serialised."""
    user = user_folders["qwen3", "legacy"]
    model, tok = load_model_and_tokenizer(user)
    tok.add_tokens(["<tool>"])
    ckpt = save_checkpoint(tmp_path / "run", 1, model, tok, {"learner": {}})
    _, reloaded = load_model_and_tokenizer(ckpt)
    assert len(reloaded) == len(tok) and "<tool>" in reloaded.get_vocab()
    assert json.loads((ckpt / "tokenizer_config.json").read_text()).get("padding_side") != "left"
