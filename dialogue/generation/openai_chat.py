"""The `openai` generator: any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, Ollama,
llama.cpp server), streamed, grounded in the retrieved passages.

The client's own retries are off: Temporal owns retries, so there is one retry policy,
visible in history. Errors become `ApplicationError`s that say whether retrying can help:
408, 409, 429, 5xx, time-outs and connection errors can (with the server's Retry-After
as the next delay); any other 4xx cannot.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

import openai
from temporalio.exceptions import ApplicationError

from dialogue.generation.grounded import Answer, Relevance, source_of
from dialogue.generation.prompts import Prompt, load_prompt
from dialogue.metrics import LLM_ERRORS, LLM_TOKENS
from workflows.contracts import Passage

NO_ANSWER = "NO_ANSWER"
RETRYABLE_STATUSES = {408, 409, 429}
MAX_PASSAGES = 4
_CITATION = re.compile(r"\[(\d+)\]")


class OpenAIChatGenerator:
    prompt: Prompt | None
    remote = True

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None,
        timeout_seconds: float,
        max_tokens: int = 400,
        temperature: float = 0.2,
        bot_description: str = "",
        relevance: Relevance | None = None,
        redact: Callable[[str], str] = str,
    ) -> None:
        self.name = f"openai:{model}"
        self.model = model
        self._prompt = load_prompt("grounded_answer", 1)
        self.prompt = self._prompt
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=api_key or "none", max_retries=0, timeout=timeout_seconds
        )
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._bot_description = bot_description
        self._relevance = relevance or Relevance()
        self._redact = redact
        """Applied to the user's words before they leave for the model (the bot's privacy policy)."""

    async def answer(
        self,
        question: str,
        passages: list[Passage],
        *,
        on_token: Callable[[str], None] | None = None,
        redact: bool = True,
    ) -> Answer | None:
        """The model's answer from the trusted passages; None when none is trusted or the model finds none.
        `redact=False` (the conversation's `redaction` flag is off) sends the question as said."""
        trusted = [p for p in passages if self._relevance.trusted(p)][:MAX_PASSAGES]
        if not trusted:
            return None
        system = self._prompt.render(
            bot_description=self._bot_description or "an online shop.",
            passages="\n\n".join(f"[{i}] {p.title}: {p.text}" for i, p in enumerate(trusted, start=1)),
        )
        text = await self._complete(system, self._redact(question) if redact else question, on_token)
        if not text or text.strip().startswith(NO_ANSWER):
            return None
        cited = {int(n) for n in _CITATION.findall(text) if 1 <= int(n) <= len(trusted)}
        used = [p for i, p in enumerate(trusted, start=1) if i in cited] or trusted[:1]
        return Answer(text=text.strip(), sources=[source_of(p) for p in used])

    async def _complete(self, system: str, question: str, on_token: Callable[[str], None] | None) -> str:
        try:
            stream = await self._client.chat.completions.create(
                model=self.model,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
                max_tokens=self._max_tokens,
                temperature=self._temperature,
                stream=True,
                # The token counts arrive in a last chunk (OpenAI, vLLM, Ollama, llama.cpp server).
                stream_options={"include_usage": True},
            )
            pieces: list[str] = []
            usage = None
            async for chunk in stream:
                usage = chunk.usage or usage
                delta = chunk.choices[0].delta.content if chunk.choices else None
                if delta:
                    pieces.append(delta)
                    if on_token is not None:
                        on_token(delta)
        except openai.APIStatusError as err:
            LLM_ERRORS.labels(str(err.status_code)).inc()
            raise _status_error(err) from err
        except (openai.APITimeoutError, openai.APIConnectionError) as err:
            LLM_ERRORS.labels("timeout" if isinstance(err, openai.APITimeoutError) else "connection").inc()
            raise ApplicationError(f"LLM endpoint unreachable: {err}", type="LlmUnavailable") from err
        if usage is not None:
            LLM_TOKENS.labels("prompt").inc(usage.prompt_tokens)
            LLM_TOKENS.labels("completion").inc(usage.completion_tokens)
        else:  # a server that reports no usage streams about one token per chunk
            LLM_TOKENS.labels("completion").inc(len(pieces))
        return "".join(pieces)


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
