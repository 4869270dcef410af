"""A real HTTP server that speaks the OpenAI chat-completions protocol, for the teacher tests.

The behaviour is chosen by the first word of the utterance, so one server
serves every mode and each test reads as what it sends:

* ``good ...``: the JSON the prompt asks for (intent ``intent_<last word>``,
  a slot ``thing``, the state's slots kept, a reply), with ``usage``;
* ``fenced ...``: the same inside a Markdown code fence;
* ``malformed ...``: content that is not JSON;
* ``schema ...``: JSON of the wrong shape (slots a list, no reply);
* ``slow ...``: answers after ``slow_s`` (longer than the client's timeout);
* ``flaky ...``: 500 the first time this text is asked, then a good answer;
* ``limited ...``: always 429 with ``Retry-After: 0``;
* ``hold ...``: a good answer after ``hold_s`` (for the concurrency count).

It records every request (headers and body) and the most requests it ever
had in progress at once.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Seen:
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeLlm:
    slow_s: float = 2.0
    hold_s: float = 0.2
    usage_tokens: int | None = 50
    refuse_response_format: bool = False
    requests: list[Seen] = field(default_factory=list)
    by_text: Counter[str] = field(default_factory=Counter)
    in_progress: int = 0
    max_in_progress: int = 0
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeLlm:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(Seen(dict(request.headers), body))
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        try:
            return await self._answer(body)
        finally:
            self.in_progress -= 1

    async def _answer(self, body: dict[str, Any]) -> web.Response:
        if self.refuse_response_format and "response_format" in body:
            return web.json_response({"error": {"message": "response_format is not supported"}}, status=400)
        user = json.loads(body["messages"][-1]["content"])
        text: str = user["utterance"]
        state = user["state"] or {}
        self.by_text[text] += 1
        mode = text.split()[0]
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
        elif mode == "hold":
            await asyncio.sleep(self.hold_s)
        elif mode == "flaky" and self.by_text[text] == 1:
            return web.json_response({"error": {"message": "overloaded"}}, status=500)
        elif mode == "limited":
            return web.json_response({"error": {"message": "slow down"}}, status=429,
                                     headers={"Retry-After": "0"})
        last = text.split()[-1]
        answer = {
            "intent": f"intent_{last}",
            "slots": {"thing": last},
            "state": {"intent": f"intent_{last}", "slots": {**state.get("slots", {}), "thing": last}},
            "reply": f"好的, {last}",
            "confidence": 0.93,
        }
        content = json.dumps(answer, ensure_ascii=False)
        if mode == "fenced":
            content = f"```json\n{content}\n```"
        elif mode == "malformed":
            content = "Sure! {intent: " + last
        elif mode == "schema":
            content = json.dumps({"intent": "x", "slots": ["a"], "state": None})
        out: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
        }
        if self.usage_tokens is not None:
            out["usage"] = {"prompt_tokens": self.usage_tokens - 10, "completion_tokens": 10,
                            "total_tokens": self.usage_tokens}
        return web.json_response(out)
