"""A teacher behind an OpenAI-compatible chat endpoint (GLM-4, vLLM, Ollama, a hosted API).

One turn is one ``POST {base_url}/chat/completions`` with the model, the
messages of :mod:`cloud_controller.teachers.llm_prompt`, temperature 0 and,
when the server takes it, ``response_format: {"type": "json_object"}`` (a
server that answers 400 to it is asked again without, and not asked with it
again). The content must be the JSON the prompt asks for; anything else is
refused as ``bad_answer`` and counted by kind (``malformed_json``,
``wrong_schema``, ``no_content``), never raised.

Limits, in the order a turn meets them:

* the answer cache (:class:`~edge_agent.escalation.answer_cache.AnswerCache`,
  the edge's own, keyed by the normalized text plus a digest of the dialogue
  state's intent and slots): a hit costs no call and no budget;
* the spend budget (:class:`~cloud_controller.teachers.spend.HourlySpend`):
  refused as ``budget`` until the clock hour rolls;
* the concurrency limit (an ``asyncio.Semaphore`` held per HTTP attempt, not
  during the backoff sleep);
* per-attempt timeout, and retries with :class:`~edge_agent.transport.backoff.Backoff`
  for timeouts, connection errors, 5xx and 429 (``Retry-After`` is honoured up
  to the backoff's maximum); the last failure names the reason: ``timeout``,
  ``upstream_error``, ``rate_limited``. Other 4xx are not retried (``http_error``).

The API key is read from the environment variable the resource names
(``apiKeyEnv``) and sent as ``Authorization: Bearer``; it is never logged,
never put in a refusal's detail, never stored in a resource or its status.

HTTP client: aiohttp. It is already in every cloud install (the kubernetes
client and the test tools pull it), is asyncio-native (no thread per call),
and gives the tests a real server in the same package; httpx would be a new
dependency for the same job. It is a ``cloud`` extra, never an edge one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from cloud_controller.resources.kinds import OpenAITeacherSpec
from cloud_controller.teachers.llm_prompt import BadAnswer, messages, parse_answer
from cloud_controller.teachers.spend import HourlySpend, estimate_tokens
from cloud_controller.teachers.teacher_backend import Refusal, TeacherAnswer, TeacherPrediction, TeacherTurn
from edge_agent.escalation.answer_cache import AnswerCache
from edge_agent.protocol.escalation_wire import DialogueStateWire
from edge_agent.transport.backoff import Backoff

__all__ = ["OpenAICompatBackend", "OpenAICompatStats"]

log = logging.getLogger(__name__)

_RETRY_INITIAL_S = 0.2
_RETRY_MAX_S = 5.0


@dataclass
class OpenAICompatStats:
    turns: int = 0
    http_requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    answered: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # reason (bad_answer kinds split) -> count

    def error(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


class _Retry(Exception):
    def __init__(self, reason: str, detail: str, wait_s: float | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.wait_s = wait_s


class _Refused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class OpenAICompatBackend:
    serial = False

    def __init__(
        self,
        spec: OpenAITeacherSpec,
        *,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self._key = environ.get(spec.api_key_env) if spec.api_key_env else None
        self.spend = HourlySpend(spec.tokens_per_hour, clock)
        self.cache: AnswerCache[TeacherAnswer] = AnswerCache(
            spec.cache.max_entries, spec.cache.ttl_seconds, clock=monotonic
        )
        self.stats = OpenAICompatStats()
        self._sem = asyncio.Semaphore(spec.max_concurrency)
        self._json_mode = spec.response_format
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the key
        return f"OpenAICompatBackend({self.spec.base_url!r}, model={self.spec.model!r})"

    @property
    def version(self) -> str:
        return f"openai:{self.spec.model}"[:128]

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def answer(self, turns: Sequence[TeacherTurn]) -> Sequence[TeacherPrediction | Refusal]:
        return await asyncio.gather(*(self.answer_one(t) for t in turns))

    async def answer_one(self, turn: TeacherTurn) -> TeacherAnswer | Refusal:
        self.stats.turns += 1
        key = _cache_text(turn.text, turn.state)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return hit
        if self.spec.api_key_env and not self._key:
            return self._refuse("no_api_key", f"environment variable {self.spec.api_key_env} is not set")
        if not self.spend.allows():
            spent = f"{self.spend.spent} of {self.spec.tokens_per_hour} tokens this hour"
            return self._refuse("budget", spent)
        msgs = messages(turn.text, turn.state, self.spec.intents)
        backoff = Backoff(_RETRY_INITIAL_S, _RETRY_MAX_S, "equal")
        attempt = 0
        while True:
            try:
                content, usage = await self._post(msgs)
                break
            except _Retry as exc:
                if attempt >= self.spec.max_retries:
                    return self._refuse(exc.reason, str(exc))
                attempt += 1
                self.stats.retries += 1
                delay = backoff.next()
                if exc.wait_s is not None:
                    delay = min(max(delay, exc.wait_s), _RETRY_MAX_S)
                await asyncio.sleep(delay)
            except _Refused as exc:
                return self._refuse(exc.reason, str(exc))
        prompt_text = "".join(m["content"] for m in msgs)
        self.spend.spend(usage if usage is not None else estimate_tokens(prompt_text, content or ""))
        if not content:
            self.stats.error("no_content")
            return Refusal("bad_answer", "no_content")
        try:
            answer = parse_answer(content).to_answer()
        except BadAnswer as exc:
            self.stats.error(str(exc).split(":", 1)[0])
            log.warning("teacher %s gave a bad answer: %s", self.version, exc)
            return Refusal("bad_answer", str(exc))
        self.stats.answered += 1
        self.cache.put(key, answer)
        return answer

    def _refuse(self, reason: str, detail: str) -> Refusal:
        self.stats.error(reason)
        log.info("teacher %s refused a turn (%s): %s", self.version, reason, detail)
        return Refusal(reason, detail)

    # ------------------------------------------------------------------ HTTP

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Content-Type": "application/json"}
            if self._key:
                headers["Authorization"] = f"Bearer {self._key}"
            self._session = aiohttp.ClientSession(headers=headers)
        return self._session

    async def _post(self, msgs: list[dict[str, str]]) -> tuple[str | None, int | None]:
        """One attempt: (content, total tokens from usage); _Retry or _Refused on failure."""
        body: dict[str, Any] = {"model": self.spec.model, "messages": msgs, "temperature": 0}
        if self._json_mode:
            body["response_format"] = {"type": "json_object"}
        timeout = aiohttp.ClientTimeout(total=self.spec.timeout_seconds)
        async with self._sem:
            self.stats.http_requests += 1
            try:
                async with self._client().post(self.url, json=body, timeout=timeout) as resp:
                    status = resp.status
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                    raw = await resp.read()
            except TimeoutError:
                raise _Retry("timeout", f"no answer within {self.spec.timeout_seconds}s") from None
            except aiohttp.ClientError as exc:
                raise _Retry("upstream_error", type(exc).__name__) from None
        if status == 429:
            raise _Retry("rate_limited", "HTTP 429", retry_after)
        if status >= 500:
            raise _Retry("upstream_error", f"HTTP {status}")
        if status == 400 and self._json_mode and b"response_format" in raw:
            self._json_mode = False  # the server does not take JSON mode: the prompt alone asks for JSON
            log.info("teacher %s: the endpoint refuses response_format; asking without it", self.version)
            return await self._post(msgs)
        if status >= 400:
            raise _Refused("http_error", f"HTTP {status}")
        return _content(raw)


def _content(raw: bytes) -> tuple[str | None, int | None]:
    """The first choice's message content and the usage's total tokens (None: not given)."""
    try:
        data = json.loads(raw)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None, None
    usage = data.get("usage") if isinstance(data, dict) else None
    total = usage.get("total_tokens") if isinstance(usage, dict) else None
    return (content if isinstance(content, str) else None), (total if isinstance(total, int) else None)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _cache_text(text: str, state: DialogueStateWire | None) -> str:
    """The cache key's text: the utterance and what of the state the model sees (not session or clock)."""
    if state is None:
        return text
    ctx = json.dumps([state.intent, state.slots, state.step], ensure_ascii=False, sort_keys=True)
    return f"{text} #{hashlib.sha256(ctx.encode()).hexdigest()[:32]}"
