"""`--generation-config auto|none|DIR` and `--chat-template FILE|STRING`, resolved once by
the front end (frontend/model_info.py, frontend/tokenizer.py): the sampling defaults each
setting gives (with a log line when a checkpoint's apply), the EOS ids kept in every case,
and chat templates from a string or a file, checked by rendering one message."""
from __future__ import annotations

import json
import logging

import pytest

from tessera.config import EngineConfig
from tessera.frontend.model_info import resolve_config


def _folder(tmp_path, name: str, generation: dict | None = None, tokenizer: bool = False):
    import transformers

    folder = tmp_path / name
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1,
                                      vocab_size=64, max_position_embeddings=128,
                                      eos_token_id=2)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(folder)
    if generation is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation))
    if tokenizer:
        _save_tokenizer(folder)
    return str(folder)


def _save_tokenizer(folder) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "hi", "there", "<<", ">>", "user", ":"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)


def _resolve(folder: str, **kw):
    kw.setdefault("skip_tokenizer_init", "chat_template" not in kw)
    return resolve_config(EngineConfig.from_kwargs(model=folder, load_format="dummy", **kw))


CHECKPOINT = {"temperature": 0.3, "top_p": 0.8, "eos_token_id": [2, 7], "max_length": 99}


def test_auto_applies_the_checkpoints_defaults_and_says_so(tmp_path, caplog):
    folder = _folder(tmp_path, "m", CHECKPOINT)
    with caplog.at_level(logging.INFO, logger="tessera"):
        config, _ = _resolve(folder)
    assert config.info.generation_defaults == {"temperature": 0.3, "top_p": 0.8}
    assert set(config.info.arch.eos_token_ids) == {2, 7}
    assert f"default sampling parameters from {folder}/generation_config.json: " \
           "temperature=0.3, top_p=0.8 (--generation-config none" in caplog.text


def test_none_keeps_tesseras_defaults_and_the_eos_ids(tmp_path, caplog):
    folder = _folder(tmp_path, "m", CHECKPOINT)
    with caplog.at_level(logging.INFO, logger="tessera"):
        config, _ = _resolve(folder, generation_config="none")
    assert config.info.generation_defaults == {}
    assert set(config.info.arch.eos_token_ids) == {2, 7}  # stopping stays the model's
    assert "default sampling parameters" not in caplog.text


def test_a_folder_or_file_gives_its_defaults(tmp_path):
    folder = _folder(tmp_path, "m", CHECKPOINT)
    other = tmp_path / "tuned"
    other.mkdir()
    (other / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.9, "top_k": 5, "eos_token_id": 9}))
    for which in (str(other), str(other / "generation_config.json")):
        config, _ = _resolve(folder, generation_config=which)
        assert config.info.generation_defaults == {"temperature": 0.9, "top_k": 5}
        assert set(config.info.arch.eos_token_ids) == {2, 7, 9}
    with pytest.raises(FileNotFoundError, match="generation_config '.*nowhere': no such"):
        _resolve(folder, generation_config=str(tmp_path / "nowhere"))


def test_a_checkpoint_without_one_has_no_defaults(tmp_path):
    config, _ = _resolve(_folder(tmp_path, "bare"))
    assert config.info.generation_defaults == {} and config.info.arch.eos_token_ids == (2,)


TEMPLATE = "{% for m in messages %}<< {{ m['content'] }} >>{% endfor %}"


def test_a_chat_template_from_a_string_or_a_file(tmp_path):
    folder = _folder(tmp_path, "m", tokenizer=True)
    file = tmp_path / "template.jinja"
    file.write_text(TEMPLATE)
    for value in (TEMPLATE, str(file)):
        _, tokenizer = _resolve(folder, chat_template=value)
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi there"}],
                                             tokenize=False)
        assert text == "<< hi there >>"


@pytest.mark.parametrize("value,error,message", [
    ("chatml", FileNotFoundError, "chat_template 'chatml' is neither a file nor a Jinja"),
    ("{% if %}", ValueError, "the chat_template given cannot render a conversation: "
                             "TemplateSyntaxError"),
    ("{{ raise_exception('no') }}", ValueError, "cannot render a conversation"),
])
def test_a_bad_chat_template_is_refused_at_start(tmp_path, value, error, message):
    folder = _folder(tmp_path, "m", tokenizer=True)
    with pytest.raises(error, match=message):
        _resolve(folder, chat_template=value)


def test_a_chat_template_needs_a_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="chat_template needs a tokenizer"):
        _resolve(_folder(tmp_path, "m"), chat_template=TEMPLATE, skip_tokenizer_init=True)
