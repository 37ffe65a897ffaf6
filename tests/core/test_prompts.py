"""Prompt formats: token-for-token equal to Mistral's own mistral-common, plus detection and plain text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from app.core.errors import PromptFormatError
from app.core.prompts import (
    FORMAT_MISTRAL_V1,
    FORMAT_MISTRAL_V3,
    FORMAT_PLAIN,
    FORMAT_TEMPLATE,
    Message,
    get_format,
    messages_from_json,
    normalize_for_mistral,
)
from app.core.runtime.host import EngineHost
from app.core.runtime.types import LoadSettings
from quant.tiny import TinyMixtralSpec, write_f16
from quant.tokenizers import mistral_tokenizer_path

M = Message
CONVERSATIONS = {
    "single user": [M("user", "Hello")],
    "system prompt": [M("system", "You are terse."), M("user", "Hello there!")],
    "multi-turn with system": [
        M("system", "Be nice."),
        M("user", "Hi"),
        M("assistant", "Hello! How can I help?"),
        M("user", "Tell me a joke."),
    ],
    "three turns": [
        M("system", "Answer in French."),
        M("user", "One"),
        M("assistant", "Un"),
        M("user", "Two"),
        M("assistant", "Deux"),
        M("user", "Three"),
    ],
    "unicode": [
        M("user", "Ünïcödé ✓ 日本語 🙂 emoji — «quotes»"),
        M("assistant", "Très bien 👍"),
        M("user", "Ελληνικά?"),
    ],
    "empty system": [M("system", ""), M("user", "No system here.")],
    "whitespace": [
        M("user", "  leading and trailing spaces  "),
        M("assistant", " spaced reply  "),
        M("user", "new\n\nlines\tand\ttabs\n"),
    ],
    "same-role neighbours and two systems": [
        M("system", "First rule."),
        M("user", "a"),
        M("user", "b"),
        M("system", "Second rule."),
        M("assistant", "c"),
        M("user", "d"),
    ],
    "assistant first": [M("assistant", "I speak first."), M("user", "Then me.")],
    "code": [M("user", "```python\ndef f(x):\n    return x * 2\n```\nWhat does it do?")],
}
ROLE_CLASSES = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}


def mistral_common_tokens(version: str, messages: list[Message]) -> list[int]:
    tokenizer = MistralTokenizer.from_file(str(mistral_tokenizer_path(version)))
    request = ChatCompletionRequest(messages=[ROLE_CLASSES[m.role](content=m.content) for m in messages])
    return tokenizer.encode_chat_completion(request).tokens


@pytest.mark.parametrize("version", ["v1", "v3"])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_prompt_tokens_equal_mistral_common(vocab_engines: dict[str, EngineHost], version: str, name: str) -> None:
    messages = CONVERSATIONS[name]
    ours = vocab_engines[version].prompt_tokens(messages)
    assert ours == mistral_common_tokens(version, messages)


def test_formats_are_detected_from_the_gguf(vocab_engines: dict[str, EngineHost]) -> None:
    assert vocab_engines["v1"].info.chat_format == FORMAT_MISTRAL_V1
    assert vocab_engines["v3"].info.chat_format == FORMAT_MISTRAL_V3


def test_demo_model_uses_its_embedded_chatml_template(demo_model: Path) -> None:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(demo_model), vocab_only=True))
    assert engine.info.chat_format == FORMAT_TEMPLATE
    text = engine.detokenize(engine.prompt_tokens([M("system", "S"), M("user", "U")]))
    assert text.startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")


def test_base_mixtral_is_detected_as_plain_text(tmp_path: Path) -> None:
    path = write_f16(TinyMixtralSpec(tokenizer="v1", name="Mixtral-8x7B-v0.1", n_layer=1), tmp_path / "base.gguf")
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(path), vocab_only=True))
    assert engine.info.chat_format == FORMAT_PLAIN


def test_manual_format_override_wins(vocab_engines: dict[str, EngineHost], tiny_v1: dict[str, Path]) -> None:
    engine = EngineHost()
    engine.load(LoadSettings(model_path=str(tiny_v1["Q4_0"]), vocab_only=True, chat_format=FORMAT_PLAIN))
    assert engine.info.chat_format == FORMAT_PLAIN


def test_v1_and_v3_place_the_system_prompt_differently(vocab_engines: dict[str, EngineHost]) -> None:
    messages = CONVERSATIONS["multi-turn with system"]
    v1_text = vocab_engines["v1"].detokenize(vocab_engines["v1"].prompt_tokens(messages))
    v3_text = vocab_engines["v3"].detokenize(vocab_engines["v3"].prompt_tokens(messages))
    assert v1_text.index("Be nice.") < v1_text.index("Hi") < v1_text.index("Tell me a joke.")
    assert v3_text.index("Hi") < v3_text.index("Be nice.") < v3_text.index("Tell me a joke.")


def test_plain_text_is_continued_without_a_template(vocab_engines: dict[str, EngineHost]) -> None:
    vocab = vocab_engines["v1"].with_model(lambda loaded: loaded.vocab)
    tokens = get_format(FORMAT_PLAIN).encode([M("user", "Once upon a time")], vocab)
    assert tokens == [vocab.bos_id, *vocab.encode("Once upon a time", special=False)]
    assert "[INST]" not in vocab.decode(tokens)


def test_v3_format_refuses_a_v1_vocabulary(vocab_engines: dict[str, EngineHost]) -> None:
    with pytest.raises(PromptFormatError, match=r"\[INST\] control tokens"):
        get_format(FORMAT_MISTRAL_V3).encode(
            [M("user", "x")], vocab_engines["v1"].with_model(lambda loaded: loaded.vocab)
        )


def test_empty_assistant_message_is_rejected_with_a_reason(vocab_engines: dict[str, EngineHost]) -> None:
    with pytest.raises(PromptFormatError, match="empty"):
        vocab_engines["v1"].prompt_tokens([M("user", "a"), M("assistant", ""), M("user", "b")])


def test_normalisation_merges_like_mistral_common() -> None:
    conversation = normalize_for_mistral([M("system", "s1"), M("user", "a"), M("user", "b"), M("system", "s2")])
    assert conversation.system_prompt == "s1\n\ns2"
    assert conversation.messages == (M("user", "a\n\nb"),)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"role": "user"}, "JSON list"),
        ([{"role": "user"}], '"role" and "content"'),
        ([{"role": "robot", "content": "x"}], "robot"),
        ([{"role": "user", "content": 3}], "must be a string"),
    ],
)
def test_bad_message_files_get_clear_errors(payload: object, message: str) -> None:
    with pytest.raises(PromptFormatError, match=message):
        messages_from_json(json.loads(json.dumps(payload)))
