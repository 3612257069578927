"""The `openai` generator: any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, Ollama,
llama.cpp server), streamed, grounded in the retrieved passages, seeing the conversation.

The client's own retries are off: Temporal owns retries, so there is one retry policy,
visible in history. Errors become `ApplicationError`s that say whether retrying can help:
408, 409, 429, 5xx, time-outs and connection errors can (with the server's Retry-After
as the next delay); any other 4xx cannot.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, cast

import jsonschema
import openai
import orjson
from temporalio.exceptions import ApplicationError

from dialogue.brain.agent.declarations import passages_message
from dialogue.brain.generation.grounded import Answer, Relevance, source_of
from dialogue.brain.generation.model_client import Completion, ModelClient, RequestedCall
from dialogue.brain.generation.prompts import Prompt, prompt_by_ref
from dialogue.brain.llm.context import ChatMessage, Context, Conversation, assemble
from dialogue.brain.llm.tokenizer import TokenCounter, counter_for
from dialogue.model.contracts import Passage
from dialogue.platform.bot import LlmSettings
from dialogue.platform.metrics import LLM_ERRORS, LLM_TOKENS

NO_ANSWER = "NO_ANSWER"
RETRYABLE_STATUSES = {408, 409, 429}
MAX_PASSAGES = 4
INVALID_STRUCTURED_REPLY = "InvalidStructuredReply"
_CITATION = re.compile(r"\[(\d+)\]")
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


class ChatClient:
    """One OpenAI-compatible endpoint and model: a streamed completion, errors made retryable or not."""

    def __init__(self, *, base_url: str, model: str, api_key: str | None, timeout_seconds: float) -> None:
        self.model = model
        self.counter: TokenCounter = counter_for(model)
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "none", max_retries=0, timeout=timeout_seconds
        )
        self._json_schema = True
        """Whether the endpoint takes `response_format` json_schema; learnt from its first refusal."""

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int,
        temperature: float,
        on_token: Callable[[str], None] | None = None,
        schema: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Completion:
        """The model's reply to `messages`. With `schema`, a JSON object is asked for: through
        `response_format` where the endpoint supports it, else in the instructions. With `tools`
        (OpenAI's function tools), the model may ask for calls instead of, or beside, its text."""
        notes: list[str] = []
        options: dict[str, Any] = {"tools": tools} if tools else {}
        if schema is not None and self._json_schema:
            options["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": schema, "strict": True},
            }
        elif schema is not None:
            messages = _with_schema_instructions(messages, schema)
            notes.append("response_format not supported: the schema was put in the instructions")
        try:
            completion = await self._stream(messages, max_tokens, temperature, on_token, options)
        except openai.BadRequestError as err:
            if "response_format" not in options or not _about_response_format(err):
                LLM_ERRORS.labels(str(err.status_code)).inc()
                raise _status_error(err) from err
            # An endpoint without structured output: ask for the JSON in words instead, from now on.
            self._json_schema = False
            return await self.complete(
                messages,
                max_tokens=max_tokens,
                temperature=temperature,
                on_token=on_token,
                schema=schema,
                tools=tools,
            )
        except openai.APIStatusError as err:
            LLM_ERRORS.labels(str(err.status_code)).inc()
            raise _status_error(err) from err
        except (openai.APITimeoutError, openai.APIConnectionError) as err:
            LLM_ERRORS.labels("timeout" if isinstance(err, openai.APITimeoutError) else "connection").inc()
            raise ApplicationError(f"LLM endpoint unreachable: {err}", type="LlmUnavailable") from err
        completion.notes = notes + completion.notes
        return completion

    async def _stream(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        temperature: float,
        on_token: Callable[[str], None] | None,
        options: dict[str, Any],
    ) -> Completion:
        stream = await self._client.chat.completions.create(
            model=self.model,
            messages=cast(Any, messages),
            max_tokens=max_tokens,
            temperature=temperature,
            stream=True,
            # The token counts arrive in a last chunk (OpenAI, vLLM, Ollama, llama.cpp server).
            stream_options={"include_usage": True},
            extra_body=options or None,
        )
        pieces: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        usage = None
        written = 0
        cut = False
        async for chunk in stream:
            usage = chunk.usage or usage
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                # A call's id and name come in its first delta, its arguments in pieces after.
                gathered = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                gathered["id"] = call.id or gathered["id"]
                if call.function is not None:
                    gathered["name"] = call.function.name or gathered["name"]
                    gathered["arguments"] += call.function.arguments or ""
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if not delta:
                continue
            written += self.counter.count(delta)
            if written > max_tokens:
                # A model that loops or floods, behind an endpoint that does not stop it: stop reading.
                cut = True
                await stream.close()
                break
            pieces.append(delta)
            if on_token is not None:
                on_token(delta)
        prompt_tokens = usage.prompt_tokens if usage is not None else None
        completion_tokens = usage.completion_tokens if usage is not None else written
        if prompt_tokens is not None:
            LLM_TOKENS.labels("prompt").inc(prompt_tokens)
        LLM_TOKENS.labels("completion").inc(completion_tokens)
        notes = [f"the reply was cut at max_tokens ({max_tokens})"] if cut else []
        requested = [RequestedCall(**calls[index]) for index in sorted(calls)]
        return Completion("".join(pieces), prompt_tokens, completion_tokens, cut, notes, requested)


class OpenAIChatGenerator:
    """An answer generator that is also a `ModelClient`: the model the steps around its answers talk to."""

    remote = True

    def __init__(
        self,
        client: ChatClient,
        settings: LlmSettings,
        *,
        bot_description: str = "",
        relevance: Relevance | None = None,
        redact: Callable[[str], str] = str,
    ) -> None:
        self.name = f"openai:{client.model}"
        self.prompt: Prompt | None = prompt_by_ref(settings.prompt)
        self._client = client
        self._settings = settings
        self._bot_description = bot_description
        self._relevance = relevance or Relevance()
        self._redact = redact
        """Applied to every message before it leaves for the model (the bot's privacy policy)."""

    @property
    def model_client(self) -> ModelClient:
        return self

    @property
    def summary_prompt(self) -> Prompt:
        return prompt_by_ref(self._settings.summary_prompt)

    @property
    def rewrite_prompt(self) -> Prompt:
        return prompt_by_ref(self._settings.rewrite_prompt)

    async def chat(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        tools: list[dict[str, Any]] | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> Completion:
        return await self._client.complete(
            messages,
            max_tokens=self._settings.max_tokens if max_tokens is None else max_tokens,
            temperature=self._settings.temperature if temperature is None else temperature,
            tools=tools,
            on_token=on_token,
        )

    def assemble(
        self,
        *,
        system: str,
        current: str,
        conversation: Conversation,
        redact: Callable[[str], str],
        documents: Sequence[ChatMessage] = (),
    ) -> Context:
        return assemble(
            system=system,
            documents=documents,
            current=current,
            earlier=conversation.earlier,
            summary=conversation.summary,
            budget=self._settings.context_tokens,
            counter=self._client.counter,
            redact=redact,
            expected=conversation.expected,
            unread_before=conversation.unread_before,
            notes=conversation.notes,
            remembered=conversation.remembered,
        )

    async def answer(
        self,
        question: str,
        passages: list[Passage],
        *,
        on_token: Callable[[str], None] | None = None,
        redact: bool = True,
        conversation: Conversation | None = None,
    ) -> Answer | None:
        """The model's answer from the trusted passages, seeing the conversation; None when no passage is
        trusted, an answer marked not found when the model finds none in them. `redact=False` (the
        conversation's `redaction` flag is off) sends the words as said."""
        prepared = self.prepare(question, passages, conversation=conversation, redact=redact)
        if prepared is None:
            return None
        trusted, context = prepared
        settings = self._settings
        schema = settings.response_format
        completion = await self._client.complete(
            context.messages,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            on_token=None if schema is not None else on_token,  # JSON pieces are no words for a reader
            schema=schema,
        )
        data = None
        if schema is not None:
            data, completion = await self._structured(context.messages, completion, schema)
        lineage = context.lineage.model_copy(
            update={
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "notes": context.lineage.notes + completion.notes,
            }
        )
        text = _said(data, settings.reply_field) if data is not None else completion.text
        if not text or text.strip().startswith(NO_ANSWER):
            return Answer(text="", sources=[], found=False, context=lineage, data=data)
        cited = {int(n) for n in _CITATION.findall(text) if 1 <= int(n) <= len(trusted)}
        used = [p for i, p in enumerate(trusted, start=1) if i in cited] or trusted[:1]
        return Answer(text=text.strip(), sources=[source_of(p) for p in used], context=lineage, data=data)

    def prepare(
        self,
        question: str,
        passages: list[Passage],
        *,
        conversation: Conversation | None = None,
        redact: bool = True,
        prompt: Prompt | None = None,
    ) -> tuple[list[Passage], Context] | None:
        """The passages the model may use and the messages it is sent; None when no passage is trusted.
        No I/O: the same inputs, from a history, give the same messages (`dialogue.brain.llm.rebuild`, which
        passes the `prompt` the answer recorded; the bot's own otherwise)."""
        trusted = [p for p in passages if self._relevance.trusted(p)][:MAX_PASSAGES]
        if not trusted:
            return None
        prompt = prompt or self.prompt
        assert prompt is not None
        description = self._bot_description or "an online shop."
        if "{passages}" in prompt.template:
            # The prompts from before the passages had a message of their own (`grounded_answer@v1`, `@v2`).
            numbered = "\n\n".join(f"[{i}] {p.title}: {p.text}" for i, p in enumerate(trusted, start=1))
            system, data = prompt.render(bot_description=description, passages=numbered), []
        else:
            system = prompt.render(bot_description=description)
            data = passages_message(trusted, numbered=True)
        context = self.assemble(
            system=system,
            current=question,
            conversation=conversation or Conversation(),
            redact=self._redact if redact else str,
            documents=data,
        )
        return trusted, context

    async def _structured(
        self, messages: list[ChatMessage], completion: Completion, schema: dict[str, Any]
    ) -> tuple[dict[str, Any], Completion]:
        """The reply's object, valid against the schema; one more try when it is not, then a failure that
        retrying cannot fix (the turn falls back, degraded)."""
        problem = _invalid(completion.text, schema)
        if problem is None:
            return _parsed(completion.text), completion
        again = await self._client.complete(
            [
                *messages,
                {"role": "assistant", "content": completion.text},
                {
                    "role": "user",
                    "content": f"That reply is not valid: {problem}. Reply again with only a JSON object "
                    "that conforms to the schema.",
                },
            ],
            max_tokens=self._settings.max_tokens,
            temperature=self._settings.temperature,
            schema=schema,
        )
        problem = _invalid(again.text, schema)
        if problem is not None:
            raise ApplicationError(
                f"the model's reply does not conform to the bot's response_format twice: {problem}",
                type=INVALID_STRUCTURED_REPLY,
                non_retryable=True,
            )
        again.notes = [*completion.notes, "the first reply did not conform to the schema", *again.notes]
        again.prompt_tokens = _sum(completion.prompt_tokens, again.prompt_tokens)
        again.completion_tokens = _sum(completion.completion_tokens, again.completion_tokens)
        return _parsed(again.text), again


def _parsed(text: str) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(_FENCE.sub("", text.strip()))
    return value


def _invalid(text: str, schema: dict[str, Any]) -> str | None:
    """Why `text` is not a JSON object valid against `schema`; None when it is."""
    try:
        value = orjson.loads(_FENCE.sub("", text.strip()))
    except orjson.JSONDecodeError as err:
        return f"not JSON ({err})"
    if not isinstance(value, dict):
        return "not a JSON object"
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as err:
        return err.message
    return None


def _said(data: dict[str, Any], field_name: str) -> str:
    value = data.get(field_name)
    return value if isinstance(value, str) else orjson.dumps(data).decode()


def _sum(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


def _with_schema_instructions(messages: list[ChatMessage], schema: dict[str, Any]) -> list[ChatMessage]:
    rule = (
        "\n\nReply with only a JSON object, no other text, that conforms to this JSON schema:\n"
        + orjson.dumps(schema).decode()
    )
    first, *rest = messages
    return [{**first, "content": first["content"] + rule}, *rest]


def _about_response_format(err: openai.BadRequestError) -> bool:
    text = f"{err.message} {err.body}".lower()
    return "response_format" in text or "json_schema" in text


def _status_error(err: openai.APIStatusError) -> ApplicationError:
    status = err.status_code
    message = f"LLM endpoint answered {status}: {err.message}"
    if status in RETRYABLE_STATUSES or status >= 500:
        return ApplicationError(message, type="LlmUnavailable", next_retry_delay=_retry_after(err))
    return ApplicationError(message, type="LlmRequestRejected", non_retryable=True)


def _retry_after(err: openai.APIStatusError) -> timedelta | None:
    value = err.response.headers.get("retry-after")
    try:
        return timedelta(seconds=float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: let the retry policy's backoff decide
