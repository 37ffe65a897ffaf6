"""Tool calling in Mixtral 8x22B's prompt format (tokenizer v3): token for token what mistral-common encodes,
for tools offered, calls, results and conversations that go on after them; formats without a tool syntax refuse."""

from __future__ import annotations

import pytest
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, ToolMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool
from mistral_common.protocol.instruct.tool_calls import ToolCall as MistralToolCall
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from app.core.errors import PromptFormatError
from app.core.prompts import FORMAT_MISTRAL_V1, FORMAT_MISTRAL_V3, Message, ToolCall
from app.core.runtime.host import EngineHost
from quant.tokenizers import mistral_tokenizer_path

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city"],
        },
        "strict": True,  # OpenAI's; mistral-common leaves it out
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}

M = Message
CONVERSATIONS: dict[str, tuple[list[dict], list[Message]]] = {
    "tools offered": ([WEATHER], [M("user", "What's the weather in Paris?")]),
    "system prompt and two tools": (
        [WEATHER, TIME],
        [M("system", "Use tools when they help."), M("user", "Hi"), M("assistant", "Hello!"), M("user", "Time?")],
    ),
    "a call and its result": (
        [WEATHER],
        [
            M("user", "Weather in Paris?"),
            M("assistant", "", (ToolCall("abcDEF123", "get_weather", '{"city": "Paris"}'),)),
            M("tool", '{"temperature": 21, "sky": "clear"}', tool_call_id="abcDEF123"),
        ],
    ),
    "the conversation goes on after a call": (
        [WEATHER],
        [
            M("user", "Weather in Paris?"),
            M("assistant", "", (ToolCall("call00001", "get_weather", '{"city":"Paris","unit":"C"}'),)),
            M("tool", '{"temperature": 21}', tool_call_id="call00001"),
            M("assistant", "It is 21 °C in Paris."),
            M("user", "And in Oslo?"),
        ],
    ),
    "two calls at once": (
        [WEATHER, TIME],
        [
            M("system", "Be precise."),
            M("user", "Weather and time in Tokyo?"),
            M(
                "assistant",
                "",
                (ToolCall("w00000001", "get_weather", '{"city": "Tokyo"}'), ToolCall("t00000002", "get_time", "")),
            ),
            M("tool", '{"temperature": 18}', tool_call_id="w00000001"),
            M("tool", "09:30", tool_call_id="t00000002"),  # not JSON: passed on as text
        ],
    ),
    "unicode and no description": (
        [TIME, WEATHER],
        [
            M("user", "Quelle heure est-il à Zürich ? 🕰"),
            M("assistant", "", (ToolCall("zurich999", "get_time", '{"ville": "Zürich"}'),)),
            M("tool", '{"heure": "10 h 05", "fuseau": "Europe/Zürich"}', tool_call_id="zurich999"),
        ],
    ),
}


def mistral_common_tokens(tools: list[dict], messages: list[Message]) -> list[int]:
    def convert(message: Message) -> object:
        if message.role == "system":
            return SystemMessage(content=message.content)
        if message.role == "user":
            return UserMessage(content=message.content)
        if message.role == "tool":
            return ToolMessage(content=message.content, tool_call_id=message.tool_call_id)
        calls = [
            MistralToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
            for c in message.tool_calls
        ]
        return AssistantMessage(content=message.content or None, tool_calls=calls or None)

    mistral_tools = [
        Tool(function=Function(**{k: v for k, v in t["function"].items() if k != "strict"})) for t in tools
    ]
    request = ChatCompletionRequest(messages=[convert(m) for m in messages], tools=mistral_tools)
    tokenizer = MistralTokenizer.from_file(str(mistral_tokenizer_path("v3")))
    return tokenizer.encode_chat_completion(request).tokens


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_tool_prompts_equal_mistral_common(vocab_engines: dict[str, EngineHost], name: str) -> None:
    tools, messages = CONVERSATIONS[name]
    ours = vocab_engines["v3"].prompt_tokens(messages, FORMAT_MISTRAL_V3, tools=tuple(tools))
    assert ours == mistral_common_tokens(tools, messages)


def test_a_format_without_tools_says_so(vocab_engines: dict[str, EngineHost]) -> None:
    tools, messages = CONVERSATIONS["a call and its result"]
    with pytest.raises(PromptFormatError, match="8x22B"):
        vocab_engines["v1"].prompt_tokens(messages[:1], FORMAT_MISTRAL_V1, tools=tuple(tools))
    with pytest.raises(PromptFormatError, match="tool calls or results"):
        vocab_engines["v1"].prompt_tokens(messages, FORMAT_MISTRAL_V1)


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        ([M("user", "x"), M("assistant", "", (ToolCall("short", "f", "{}"),))], "9 letters or digits"),
        ([M("user", "x"), M("assistant", "", (ToolCall("abcdefghi", "f", "{}"),)), M("tool", "{}")], "tool_call_id"),
        ([M("user", "x"), M("assistant", "text", (ToolCall("abcdefghi", "f", "{}"),))], "both text and tool calls"),
    ],
    ids=["bad-id", "result-without-id", "text-and-calls"],
)
def test_malformed_tool_turns_are_refused_clearly(vocab_engines: dict[str, EngineHost], messages, words: str) -> None:
    with pytest.raises(PromptFormatError, match=words):
        vocab_engines["v3"].prompt_tokens(messages, FORMAT_MISTRAL_V3, tools=(TIME,))


def test_a_bad_tool_definition_is_refused_clearly(vocab_engines: dict[str, EngineHost]) -> None:
    with pytest.raises(PromptFormatError, match=r"tools\[0\]"):
        vocab_engines["v3"].prompt_tokens([M("user", "x")], FORMAT_MISTRAL_V3, tools=({"type": "function"},))
