"""The requests the API accepts, checked strictly (no "7" for 7, no "yes" for true), and turned into the engine
host's :class:`GenerationRequest`.

What a client may send beyond OpenAI's own fields is llama.cpp's (``top_k``, ``min_p``, ``repeat_penalty``,
``ignore_eos``).
``response_format`` (JSON, or JSON following a schema) becomes a llama.cpp grammar the reply must follow.
Tools (OpenAI's ``tools``, ``tool_choice``, ``parallel_tool_calls``, assistant ``tool_calls`` and ``tool``
messages) reach the engine host, which offers them in the model's format (8x22B's v3; other formats refuse).
What is not built yet is refused with a 400 that says so, never silently ignored.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.context import POLICY_ROLLING
from app.core.errors import DeskError
from app.core.prompts import FORMAT_PLAIN, Message, ToolCall
from app.core.runtime.grammars import json_grammar
from app.core.runtime.types import GenerationRequest, SamplingSettings

MAX_STOP_STRINGS = 16  # OpenAI takes 4, llama-server any number; clients for local models send a few more
MAX_NEW_TOKENS = 131072
MAX_CHOICES = 16  # n: replies to one prompt (they share its evaluation)
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
STRICT = ConfigDict(strict=True, extra="ignore")


class RequestProblem(ValueError):
    """A request the server understands but cannot serve as asked (a 400, with ``param``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ChatMessage(BaseModel):
    model_config = STRICT

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def message(self, where: str) -> Message:
        """This message as the engine reads it (``developer`` is a system prompt; calls and results kept)."""
        role = "system" if self.role == "developer" else self.role
        if self.role == "tool" and not self.tool_call_id:
            raise RequestProblem(f"{where}.tool_call_id is missing: say which call this result answers.", where)
        calls = tuple(_tool_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(self.tool_calls or ()))
        if calls and self.role != "assistant":
            raise RequestProblem(f"{where}: only assistant messages hold tool_calls.", f"{where}.tool_calls")
        return Message(role, self.text(where), calls, self.tool_call_id or "")

    def text(self, where: str) -> str:
        """The message's text: a string, or its text parts joined (other part types are refused)."""
        if self.content is None:
            if self.role == "assistant":
                return ""  # an assistant turn that only called tools
            raise RequestProblem(f"{where}.content is missing: a {self.role} message needs text.", f"{where}.content")
        if isinstance(self.content, str):
            return self.content
        texts = []
        for index, part in enumerate(self.content):
            kind = part.get("type")
            if kind != "text" or not isinstance(part.get("text"), str):
                raise RequestProblem(
                    f"{where}.content[{index}] is of type {kind!r}: this model reads text only "
                    "(parts of type 'text' with a 'text' string).",
                    f"{where}.content",
                )
            texts.append(part["text"])
        return "\n".join(texts)


def _tool_call(call: dict[str, Any], where: str) -> ToolCall:
    """An OpenAI ``tool_calls`` entry: ``{"id", "type": "function", "function": {"name", "arguments"}}``."""
    function = call.get("function")
    if (
        not isinstance(call.get("id"), str)
        or not isinstance(function, dict)
        or not isinstance(function.get("name"), str)
        or not isinstance(function.get("arguments", ""), str)
    ):
        raise RequestProblem(
            f"{where} must be {{'id': ..., 'type': 'function', 'function': {{'name': ..., 'arguments': '<JSON>'}}}}.",
            where,
        )
    return ToolCall(call["id"], function["name"], function.get("arguments", "") or "{}")


class SamplingFields(BaseModel):
    model_config = STRICT

    model: str
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)  # llama.cpp's, with llama-server's default; 0 = off
    min_p: float = Field(0.05, ge=0.0, le=1.0)  # llama.cpp's, with llama-server's default
    repeat_penalty: float = Field(1.0, gt=0.0, le=10.0)  # llama.cpp's; OpenAI clients expect none
    ignore_eos: bool = False  # llama.cpp's: write max_tokens tokens whatever the model says (benchmarks)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, not {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("a stop string cannot be empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.isdigit():
                raise ValueError(f"keys are token ids, not {token!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"bias {bias} for token {token} is outside -100..100")
        return value

    def sampling(self) -> SamplingSettings:
        """What the engine host samples with."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingSettings(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repeat_penalty=self.repeat_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=tuple((int(token), bias) for token, bias in (self.logit_bias or {}).items()),
            max_new_tokens=self.max_completion_tokens or self.max_tokens or 1024,
            seed=self.seed,
            stop=tuple(stops),
            top_logprobs=self.top_logprobs_asked(),
            ignore_eos=self.ignore_eos,
        )

    def top_logprobs_asked(self) -> int:
        """-1: no log-probabilities; otherwise how many alternatives per token."""
        return -1


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    response_format: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    def top_logprobs_asked(self) -> int:
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestProblem("top_logprobs needs logprobs: true.", "top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else -1

    def generation(self) -> GenerationRequest:
        messages = tuple(m.message(f"messages[{i}]") for i, m in enumerate(self.messages))
        sampling = self.sampling()
        grammar = self._grammar()
        if grammar:
            sampling = replace(sampling, grammar=grammar)
        choice, required_tool = self._tool_choice()
        return GenerationRequest(
            messages,
            sampling,
            POLICY_ROLLING,
            tools=tuple(self.tools or ()),
            tool_choice=choice,
            required_tool=required_tool,
            parallel_tool_calls=self.parallel_tool_calls,
        )

    def _tool_choice(self) -> tuple[str, str]:
        """(auto | none | required, the one tool the reply must call or "")."""
        choice = self.tool_choice if self.tool_choice is not None else "auto"
        if isinstance(choice, dict):
            function = choice.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if choice.get("type") != "function" or not isinstance(name, str):
                raise RequestProblem(
                    "tool_choice must be auto, none, required or {'type': 'function', 'function': {'name': ...}}.",
                    "tool_choice",
                )
            choice, required = "required", name
        else:
            required = ""
        if choice == "required" and not self.tools:
            raise RequestProblem("tool_choice asks for a tool call, but no tools are offered.", "tool_choice")
        return choice, required

    def _grammar(self) -> str:
        """The GBNF ``response_format`` asks for ("" for free text)."""
        kind = (self.response_format or {}).get("type", "text")
        if kind == "text":
            return ""
        if kind == "json_object":
            return json_grammar()
        if kind == "json_schema":
            spec = (self.response_format or {}).get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise RequestProblem(
                    "response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}.",
                    "response_format",
                )
            try:
                return json_grammar(schema)
            except DeskError as err:
                raise RequestProblem(str(err), "response_format") from err
        raise RequestProblem(
            f"response_format {kind!r} is not one of text, json_object, json_schema.", "response_format"
        )


class CompletionRequest(SamplingFields):
    prompt: str
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # the legacy API's: alternatives per token

    def top_logprobs_asked(self) -> int:
        return self.logprobs if self.logprobs is not None else -1

    def generation(self) -> GenerationRequest:
        return GenerationRequest((Message("user", self.prompt),), self.sampling(), POLICY_ROLLING, FORMAT_PLAIN)


class TokenizeRequest(BaseModel):
    model_config = STRICT

    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    model_config = STRICT

    tokens: list[int]
