"""Chat formats: Mixtral instruct v1 / v3 token-exact, the GGUF's own chat template, and plain text.

Mistral formats are built segment by segment, exactly as Mistral's ``mistral-common`` does it: each user
turn and each assistant reply is tokenised on its own (so each gets SentencePiece's leading space) and the
BOS / EOS / ``[INST]`` ids are inserted as ids, never parsed out of a string. For v1 the ``[INST]`` markers
are ordinary text; for v3 they are control tokens. v1 puts the system prompt before the *first* user
message, v3 before the *last* one.

v3 also has tool calling, as mistral-common's ``InstructTokenizerV3`` writes it: the tools' JSON between
``[AVAILABLE_TOOLS]`` and ``[/AVAILABLE_TOOLS]`` before the last ``[INST]``, an assistant's calls as
``[TOOL_CALLS]`` and their JSON, and each tool's result between ``[TOOL_RESULTS]`` and ``[/TOOL_RESULTS]``.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from app.core.errors import PromptFormatError

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")

FORMAT_MISTRAL_V1 = "mistral-v1"
FORMAT_MISTRAL_V3 = "mistral-v3"
FORMAT_TEMPLATE = "gguf-template"
FORMAT_PLAIN = "plain"
FORMATS: tuple[str, ...] = (FORMAT_MISTRAL_V1, FORMAT_MISTRAL_V3, FORMAT_TEMPLATE, FORMAT_PLAIN)

# mistral-common joins consecutive messages of one role (and several system prompts) with this.
MESSAGE_JOIN = "\n\n"


TOOL_CALL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")  # what Mistral's v3 tool format requires
TOOL_CALLS_MARKER = "[TOOL_CALLS]"  # the v3 control token that starts a reply's tool calls


def new_tool_call_id() -> str:
    """A fresh call id in the shape Mistral's tool format requires (9 letters or digits)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(9))


@dataclass(frozen=True)
class ToolCall:
    """A function the assistant asked for: its call id, name and JSON arguments (as text)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """One chat message; an assistant's may call tools, and a ``tool`` message answers the call ``tool_call_id``."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            data["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in self.tool_calls]
        if self.tool_call_id:
            data["tool_call_id"] = self.tool_call_id
        return data


def messages_from_json(data: object) -> list[Message]:
    """Parse a JSON list of ``{"role", "content"}`` objects, with a clear error for anything else."""
    if not isinstance(data, list):
        raise PromptFormatError('Messages must be a JSON list of {"role": ..., "content": ...} objects.')
    messages = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or "role" not in item or "content" not in item:
            raise PromptFormatError(f'Message {index + 1} must be an object with "role" and "content".')
        role, content = item["role"], item["content"]
        if role not in ROLES:
            raise PromptFormatError(f"Message {index + 1} has role {role!r}; use one of {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise PromptFormatError(f'Message {index + 1}: "content" must be a string.')
        messages.append(Message(role, content))
    return messages


class Vocabulary(Protocol):
    """What a chat format needs from a model's tokenizer (llama.cpp's, in practice)."""

    size: int
    bos_id: int
    eos_id: int
    add_bos: bool

    def encode(self, text: str, *, special: bool) -> list[int]:
        """Tokenise ``text`` without BOS; ``special`` lets control-token text become control tokens."""
        ...

    def piece_id(self, piece: str) -> int | None:
        """The id of the token whose text is exactly ``piece``, or None."""
        ...

    def render_template(self, messages: Sequence[Message]) -> str | None:
        """The model's embedded chat template applied to ``messages`` with a generation prompt, or None."""
        ...


@dataclass(frozen=True)
class MistralConversation:
    """A conversation normalised the way mistral-common normalises a chat request."""

    system_prompt: str | None
    messages: tuple[Message, ...]  # user / assistant only, alternating roles, starting with user


def normalize_for_mistral(messages: Sequence[Message]) -> MistralConversation:
    """Merge system prompts and same-role neighbours as mistral-common does (tool results stay one per
    message; call arguments and results are re-serialised as JSON); start with a user turn."""
    system_parts = [m.content for m in messages if m.role == "system" and m.content]
    merged: list[Message] = []
    for message in messages:
        if message.role == "system":
            continue
        if message.role == "tool":
            merged.append(replace(message, content=_normalized_json(message.content)))
            continue
        calls = tuple(replace(c, arguments=_normalized_json(c.arguments)) for c in message.tool_calls)
        if merged and merged[-1].role == message.role:
            previous = merged[-1]
            content = MESSAGE_JOIN.join(part for part in (previous.content, message.content) if part)
            merged[-1] = Message(message.role, content, previous.tool_calls + calls)
        else:
            merged.append(replace(message, tool_calls=calls))
    if not merged or merged[0].role != "user":
        merged.insert(0, Message("user", ""))
    system = MESSAGE_JOIN.join(system_parts) if system_parts else None
    return MistralConversation(system, tuple(merged))


def _normalized_json(text: str) -> str:
    """JSON text re-serialised as mistral-common does (``{}`` for nothing; text that is not JSON as it is)."""
    if not text:
        return "{}"
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except ValueError:
        return text


def _parsed_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class ChatFormat:
    """Turns a conversation into the exact token ids the runner feeds to the model."""

    name = ""
    #: whether replies should be stripped of leading whitespace (chat) or kept (plain continuation)
    is_chat = True
    #: tools offered to the model (OpenAI's ``tools`` entries); only formats with a tool syntax take them
    tools: tuple[dict[str, Any], ...] = ()

    def encode(self, messages: Sequence[Message], vocab: Vocabulary) -> list[int]:
        raise NotImplementedError

    def with_tools(self, tools: Sequence[dict[str, Any]]) -> ChatFormat:
        """This format offering ``tools``; a format without a tool syntax refuses."""
        if not tools:
            return self
        raise PromptFormatError(
            f"This model's prompt format ({self.name}) has no way to offer tools; Mixtral 8x22B Instruct "
            f"({FORMAT_MISTRAL_V3}) has one."
        )

    def tool_calls_token(self, vocab: Vocabulary) -> int:
        """The control token a reply's tool calls start with.

        Raises:
            PromptFormatError: this format (or this model's vocabulary) has no such token.
        """
        raise PromptFormatError(f"This model's prompt format ({self.name}) has no tool calls.")

    def read_tool_calls(self, text: str) -> tuple[ToolCall, ...]:
        """The calls in the text a reply wrote after :meth:`tool_calls_token`.

        Raises:
            PromptFormatError: the text is not a list of calls (cut short, or not JSON).
        """
        raise PromptFormatError(f"This model's prompt format ({self.name}) has no tool calls.")

    def _no_tool_messages(self, messages: Sequence[Message]) -> None:
        if any(m.role == "tool" or m.tool_calls for m in messages):
            raise PromptFormatError(
                f"The conversation holds tool calls or results, which this model's prompt format ({self.name}) "
                f"cannot express; Mixtral 8x22B Instruct ({FORMAT_MISTRAL_V3}) can."
            )


class MistralV1Format(ChatFormat):
    """Mixtral-8x7B-Instruct (tokenizer v1): ``[INST]`` as text, system prompt in the first user turn."""

    name = FORMAT_MISTRAL_V1

    def encode(self, messages: Sequence[Message], vocab: Vocabulary) -> list[int]:
        self._no_tool_messages(messages)
        conversation = normalize_for_mistral(messages)
        tokens = [vocab.bos_id]
        first_user = True
        for message in conversation.messages:
            if message.role == "user":
                content = message.content
                if first_user and conversation.system_prompt:
                    content = conversation.system_prompt + MESSAGE_JOIN + content
                first_user = False
                tokens += vocab.encode(f"[INST] {content} [/INST]", special=False)
            else:
                tokens += _encode_assistant(message.content, vocab, strip_trailing_spaces=False)
        return tokens


class MistralV3Format(ChatFormat):
    """Mixtral-8x22B-Instruct (tokenizer v3): control-token ``[INST]``, system prompt in the last user turn,
    and tool calling."""

    name = FORMAT_MISTRAL_V3

    def with_tools(self, tools: Sequence[dict[str, Any]]) -> ChatFormat:
        offered = MistralV3Format()
        offered.tools = tuple(_mistral_tool(tool, index) for index, tool in enumerate(tools))
        return offered

    def encode(self, messages: Sequence[Message], vocab: Vocabulary) -> list[int]:
        begin, end = vocab.piece_id("[INST]"), vocab.piece_id("[/INST]")
        if begin is None or end is None:
            raise PromptFormatError(
                "This model's vocabulary has no [INST] control tokens, so it is not a v3 (8x22B) model; "
                f"use the {FORMAT_MISTRAL_V1} format instead."
            )
        conversation = normalize_for_mistral(messages)
        last_user = max(i for i, m in enumerate(conversation.messages) if m.role == "user")
        tokens = [vocab.bos_id]
        for index, message in enumerate(conversation.messages):
            if message.role == "user":
                content = message.content
                if index == last_user and conversation.system_prompt:
                    content = conversation.system_prompt + MESSAGE_JOIN + content
                if index == last_user and self.tools:
                    tools_json = json.dumps(list(self.tools), ensure_ascii=False)
                    tokens += [
                        _control(vocab, "[AVAILABLE_TOOLS]"),
                        *vocab.encode(tools_json, special=False),
                        _control(vocab, "[/AVAILABLE_TOOLS]"),
                    ]
                tokens += [begin, *vocab.encode(content, special=False), end]
            elif message.role == "tool":
                if not message.tool_call_id:
                    raise PromptFormatError("A tool result needs the id of the call it answers (tool_call_id).")
                result = json.dumps(
                    {"content": _parsed_json(message.content), "call_id": message.tool_call_id}, ensure_ascii=False
                )
                tokens += [
                    _control(vocab, "[TOOL_RESULTS]"),
                    *vocab.encode(result, special=False),
                    _control(vocab, "[/TOOL_RESULTS]"),
                ]
            elif message.tool_calls:
                if message.content:
                    raise PromptFormatError("An assistant message cannot hold both text and tool calls here.")
                calls = []
                for call in message.tool_calls:
                    if not TOOL_CALL_ID.match(call.id):
                        raise PromptFormatError(
                            f"Tool call id {call.id!r} is not 9 letters or digits, as Mistral's tool format needs."
                        )
                    calls.append({"name": call.name, "arguments": _parsed_json(call.arguments), "id": call.id})
                tokens += [
                    self.tool_calls_token(vocab),
                    *vocab.encode(json.dumps(calls, ensure_ascii=False), special=False),
                    vocab.eos_id,
                ]
            else:
                tokens += _encode_assistant(message.content, vocab, strip_trailing_spaces=True)
        return tokens

    def tool_calls_token(self, vocab: Vocabulary) -> int:
        return _control(vocab, TOOL_CALLS_MARKER)

    def read_tool_calls(self, text: str) -> tuple[ToolCall, ...]:
        """``[{"name": ..., "arguments": {...}}, ...]`` (a call's own 9-character ``id`` kept, else a new one)."""
        try:
            data = json.loads(text)
        except ValueError as err:
            raise PromptFormatError(f"The reply's tool calls are not complete JSON: {text[:200]!r}") from err
        calls = []
        for item in data if isinstance(data, list) else [data]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise PromptFormatError(f"The reply's tool calls are not a list of named calls: {text[:200]!r}")
            call_id = item.get("id")
            arguments = item.get("arguments", {})
            calls.append(
                ToolCall(
                    call_id if isinstance(call_id, str) and TOOL_CALL_ID.match(call_id) else new_tool_call_id(),
                    item["name"],
                    json.dumps(arguments, ensure_ascii=False),
                )
            )
        return tuple(calls)


def _mistral_tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    """An OpenAI ``tools`` entry as mistral-common serialises it (its keys in its order, no ``strict``)."""
    function = tool.get("function") if isinstance(tool, dict) else None
    if (
        not isinstance(function, dict)
        or not isinstance(function.get("name"), str)
        or tool.get("type", "function") != "function"
    ):
        raise PromptFormatError(f"tools[{index}] must be {{'type': 'function', 'function': {{'name': ..., ...}}}}.")
    parameters = function.get("parameters", {})
    if not isinstance(parameters, dict):
        raise PromptFormatError(f"tools[{index}].function.parameters must be a JSON schema object.")
    description = function.get("description", "")
    return {
        "type": "function",
        "function": {"name": function["name"], "description": description or "", "parameters": parameters},
    }


def _control(vocab: Vocabulary, piece: str) -> int:
    token = vocab.piece_id(piece)
    if token is None:
        raise PromptFormatError(f"This model's vocabulary has no {piece} token, so it cannot call tools.")
    return token


def _encode_assistant(content: str, vocab: Vocabulary, *, strip_trailing_spaces: bool) -> list[int]:
    if strip_trailing_spaces:
        content = content.rstrip(" ")
    if not content:
        raise PromptFormatError("An assistant message in the history is empty; remove it or give it text.")
    return [*vocab.encode(content, special=False), vocab.eos_id]


class TemplateFormat(ChatFormat):
    """Any other model: the Jinja chat template embedded in its GGUF (the demo model's is ChatML)."""

    name = FORMAT_TEMPLATE

    def encode(self, messages: Sequence[Message], vocab: Vocabulary) -> list[int]:
        self._no_tool_messages(messages)
        text = vocab.render_template(messages)
        if text is None:
            raise PromptFormatError(
                "This model has no chat template in its GGUF file; choose the plain-text format, "
                f"or {FORMAT_MISTRAL_V1}/{FORMAT_MISTRAL_V3} if it is a Mistral model."
            )
        tokens = vocab.encode(text, special=True)
        if vocab.add_bos and (not tokens or tokens[0] != vocab.bos_id):
            tokens.insert(0, vocab.bos_id)
        return tokens


class PlainFormat(ChatFormat):
    """Base models and story continuation: the text is continued as it is, with no template."""

    name = FORMAT_PLAIN
    is_chat = False

    def encode(self, messages: Sequence[Message], vocab: Vocabulary) -> list[int]:
        self._no_tool_messages(messages)
        text = "".join(m.content for m in messages)
        tokens = vocab.encode(text, special=False) if text else []
        return [vocab.bos_id, *tokens] if vocab.add_bos else tokens


def get_format(name: str) -> ChatFormat:
    """The chat format called ``name`` (one of :data:`FORMATS`)."""
    formats: dict[str, type[ChatFormat]] = {
        FORMAT_MISTRAL_V1: MistralV1Format,
        FORMAT_MISTRAL_V3: MistralV3Format,
        FORMAT_TEMPLATE: TemplateFormat,
        FORMAT_PLAIN: PlainFormat,
    }
    if name not in formats:
        raise PromptFormatError(f"Unknown prompt format {name!r}; choose one of {', '.join(FORMATS)}.")
    return formats[name]()


def detect_format(metadata: dict[str, str], vocab: Vocabulary) -> str:
    """Pick the format for a model from its GGUF metadata and vocabulary.

    Mixtral (llama architecture, 8 experts) with Mistral's 32000-token vocabulary gets v1, with the
    32768-token one (``[INST]`` as a control token) v3. A Mixtral whose name says it is not an instruct
    model gets plain text. Everything else uses its embedded chat template, or plain text without one.
    """
    arch = metadata.get("general.architecture", "")
    experts = metadata.get(f"{arch}.expert_count", "0")
    name = metadata.get("general.name", "").lower()
    is_mixtral = arch == "llama" and experts.isdigit() and int(experts) == 8
    if "mixtral" in name:
        is_mixtral = True
    if is_mixtral and vocab.piece_id("[INST]") is not None:
        mistral_format = FORMAT_MISTRAL_V3
    elif is_mixtral and vocab.size == 32000:
        mistral_format = FORMAT_MISTRAL_V1
    else:
        mistral_format = ""
    if mistral_format:
        if name and "instruct" not in name:
            return FORMAT_PLAIN
        return mistral_format
    if "tokenizer.chat_template" in metadata:
        return FORMAT_TEMPLATE
    return FORMAT_PLAIN
