"""Specs pulled from the backends that publish them (``apis[].pull``): routes follow the
backend without a pipeline.

Each pulled API is polled at its interval (with ``If-None-Match`` when the backend gave an
ETag). New content is pushed as a pipeline's would be (``PushApi.submit``, by
``pull <url>``): compiled with everything else, refused whole on an error, its rollout
watched and rolled back on a NACK, every version kept. Content that was refused is not
pushed again until it changes. A poll that fails keeps what is served; ``/pulls`` on the
admin port says when each API was last checked, and what went wrong.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import ir
from .store import MAX_BYTES

if TYPE_CHECKING:
    from .api import PushApi

log = logging.getLogger("controlplane.pull")


class Puller:
    def __init__(self, push: PushApi):
        self.push = push
        self.state: dict[str, dict[str, Any]] = {}  # API → its last poll (for /pulls)
        # whether this replica polls: with versions shared in the cluster, only the leader
        # does (each replica would push what one pull brings)
        self.polls: Callable[[], bool] = lambda: True
        self._tasks: dict[str, tuple[ir.SpecPull, asyncio.Task[Any]]] = {}

    def sync(self, pulls: tuple[ir.SpecPull, ...]) -> None:
        """Poll what the served policies say, no more (called after each compile served)."""
        wanted = {p.api: p for p in pulls}
        for api, (pull, task) in list(self._tasks.items()):
            if wanted.get(api) != pull:
                task.cancel()
                del self._tasks[api]
                if api not in wanted:
                    self.state.pop(api, None)
        for api, pull in wanted.items():
            if api not in self._tasks:
                self._tasks[api] = (pull, asyncio.ensure_future(self._loop(pull)))

    def stop(self) -> None:
        for _pull, task in self._tasks.values():
            task.cancel()

    async def _loop(self, pull: ir.SpecPull) -> None:
        while True:
            if self.polls():
                await self.poll(pull)
            else:
                self.state.setdefault(pull.api, {"url": pull.url})["note"] = "polled by the leader"
            await asyncio.sleep(pull.interval_ms / 1000)

    async def poll(self, pull: ir.SpecPull) -> bool:
        """One look at the URL; True when new content was pushed (served or refused)."""
        state = self.state.setdefault(pull.api, {"url": pull.url})
        state.pop("note", None)
        try:
            text, etag = await asyncio.to_thread(download, pull, state.get("etag"))
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            state.update(error=f"fetching failed: {reason}", failed_at=time.time())
            log.error("pulling the spec of %s from %s failed (%s); what is served stays", pull.api, pull.url, reason)
            return False
        state["checked_at"] = time.time()
        digest = hashlib.sha256(text.encode()).hexdigest() if text is not None else ""
        # unchanged: what this replica pushed last (served or refused), or what is live (pulled
        # before a restart, or by another replica)
        if text is None or digest in (state.get("digest"), self._live_digest(pull.api)):
            state["error"] = state.get("refused")  # unchanged: a refused version stays the news
            return False
        name = "openapi.json" if text.lstrip().startswith("{") else "openapi.yaml"
        answer = await self.push.submit(
            pull.api,
            {name: text},
            name,
            None,
            f"pull {pull.url}",
            "pulled",
            allow_security_changes=pull.allow_security_changes,
        )
        state.update(
            digest=digest,
            etag=etag,
            version=answer.data.get("version"),
            status=answer.status,
            refused=answer.data.get("error"),
            errors=answer.data.get("errors", []),
        )
        state["error"] = state["refused"]
        if answer.status >= 400:
            log.error("the spec pulled for %s from %s is refused: %s", pull.api, pull.url, answer.data.get("error"))
        else:
            log.info("pulled a new spec for %s from %s: version %s", pull.api, pull.url, answer.data.get("version"))
        return True

    def _live_digest(self, api: str) -> str | None:
        """The digest of the live pulled version: a restart does not push it again."""
        store = self.push.store
        version = store.live.get(api)
        record = store.record(api, version) if version is not None else None
        if record is None or not record.pushed_by.startswith("pull "):
            return None
        try:
            return hashlib.sha256(store.pushed_of(record).spec.read_bytes()).hexdigest()
        except OSError:
            return None


def download(pull: ir.SpecPull, etag: str | None) -> tuple[str | None, str | None]:
    """(text, ETag), or (None, ETag) when the backend says it has not changed."""
    headers = {"accept": "application/yaml, application/json;q=0.9, */*;q=0.5"}
    if etag:
        headers["if-none-match"] = etag
    context = ssl.create_default_context(cafile=pull.ca_file) if pull.url.startswith("https:") else None
    request = urllib.request.Request(pull.url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=pull.timeout_ms / 1000, context=context) as resp:
            body = resp.read(MAX_BYTES + 1)
            new_etag = resp.headers.get("etag")
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return None, etag
        raise ValueError(f"HTTP {exc.code}") from None
    if len(body) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES >> 20} MiB")
    return body.decode("utf-8"), new_etag
