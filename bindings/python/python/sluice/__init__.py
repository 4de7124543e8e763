"""Sluice, the AI agent gateway, in-process.

``Gateway`` runs the same gateway as ``sluice serve`` -- routing, retries,
fallbacks, breakers, keys, limits, budgets, metrics, audit -- inside this
process: a call is a function call, not a network hop.

    import sluice
    gw = sluice.Gateway()                 # the embedded default: a mock model
    gw.chat({"model": "mock-1", "messages": [{"role": "user", "content": "Hi"}]})
    for chunk in gw.stream({...}): ...
    await gw.achat({...}); async for chunk in gw.astream({...}): ...
    gw.serve("127.0.0.1:8080")            # also over HTTP, for other clients

Waiting never holds the GIL: other threads run during blocking calls, and
the async variants do not block the event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Dict, Iterator, List, Mapping, Optional, Tuple

import os as _os
import sys as _sys


class _SubmodulePath:
    """Where ``sluice.*`` submodules are looked for: this package's folder,
    then every ``sluice`` folder on ``sys.path`` as it is at import time, so
    the code generators' packages for Sluice's schemas (``protoc`` for
    ``proto/sluice/v1``: ``sluice.v1``; ``flatc`` for the token stream)
    import beside this one."""

    def __init__(self, own):
        self._own = [_os.path.realpath(p) for p in own]

    def _entries(self):
        found = list(self._own)
        for entry in _sys.path:
            d = _os.path.realpath(_os.path.join(entry or ".", "sluice"))
            if d not in found and _os.path.isdir(d):
                found.append(d)
        return found

    def __iter__(self):
        return iter(self._entries())

    def __len__(self):
        return len(self._entries())

    def __getitem__(self, i):
        return self._entries()[i]

    def __contains__(self, item):
        return item in self._entries()

    def __repr__(self):
        return f"_SubmodulePath({self._entries()!r})"


__path__ = _SubmodulePath(__path__)  # noqa: F821 (set by the import system)

from . import _sluice  # noqa: E402

__all__ = ["Gateway", "SluiceError", "ConfigError", "ChunkStream", "AsyncChunkStream", "__version__"]
__version__: str = _sluice.__version__

CHAT = "/v1/chat/completions"
PREDICT = "/v1/predict"


class SluiceError(Exception):
    """A request the gateway refused or could not complete.

    ``status`` is the HTTP status the request would have had, ``code`` the
    error's code (e.g. ``"model_not_found"``, ``"rate_limit_exceeded"``),
    ``body`` the whole error object.
    """

    def __init__(self, status: int, code: Optional[str], message: str, body: Any = None):
        super().__init__(f"{status} {code}: {message}" if code else f"{status}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body


class ConfigError(SluiceError, ValueError):
    """The configuration was refused: ``message`` has one
    ``<config>:line:col: problem`` per line."""

    def __init__(self, message: str):
        super().__init__(400, "invalid_config", message)


def _error(status: int, raw: bytes) -> SluiceError:
    try:
        body = json.loads(raw)
    except ValueError:
        return SluiceError(status, None, raw.decode("utf-8", "replace"), None)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = err.get("code") or err.get("type")
        return SluiceError(status, code, str(err.get("message", "")), body)
    if isinstance(err, str):
        return SluiceError(status, None, err, body)
    return SluiceError(status, None, raw.decode("utf-8", "replace"), body)


def _reply(status: int, raw: bytes) -> Dict[str, Any]:
    if 200 <= status < 300:
        return json.loads(raw)
    raise _error(status, raw)


def _chunk(status: int, raw: bytes) -> Dict[str, Any]:
    if status != 200:
        raise _error(status, raw)
    chunk = json.loads(raw)
    # An error after the stream began comes as an event of its own.
    if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
        err = chunk["error"]
        status = err.get("status", 502) if isinstance(err, dict) else 502
        raise _error(status if isinstance(status, int) else 502, raw)
    return chunk


def _body(request: Mapping[str, Any]) -> bytes:
    return json.dumps(request, separators=(",", ":")).encode()


def _header_list(headers: Optional[Mapping[str, str]]) -> Optional[List[Tuple[str, str]]]:
    return list(headers.items()) if headers else None


def _ms(timeout: Optional[float]) -> Optional[int]:
    return None if timeout is None else max(1, int(timeout * 1000))


class ChunkStream:
    """The chunks of a streamed answer, as dicts. Closing it (or breaking
    out of a ``with`` block, or dropping it) cancels the request upstream."""

    def __init__(self, native: Any):
        self._native = native
        self._done = False

    def __iter__(self) -> "ChunkStream":
        return self

    def __next__(self) -> Dict[str, Any]:
        if self._done:
            raise StopIteration
        item = self._native.next()
        if item is None:
            self._done = True
            raise StopIteration
        try:
            return _chunk(*item)
        except SluiceError:
            self.close()
            raise

    def close(self) -> None:
        self._done = True
        self._native.close()

    def __enter__(self) -> "ChunkStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._native.close()
        except Exception:
            pass


class AsyncChunkStream:
    """``async for`` over a streamed answer's chunks. ``aclose()`` (or a
    cancelled task) cancels the request upstream."""

    def __init__(self, native: Any):
        self._native = native
        self._done = False

    def __aiter__(self) -> "AsyncChunkStream":
        return self

    async def __anext__(self) -> Dict[str, Any]:
        if self._done:
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._native.next_async(_settler(loop, fut))
        try:
            status, raw = await fut
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if raw is None:
            self._done = True
            raise StopAsyncIteration
        try:
            return _chunk(status, raw)
        except SluiceError:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        self._done = True
        self._native.close()

    async def __aenter__(self) -> "AsyncChunkStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:
        try:
            self._native.close()
        except Exception:
            pass


def _settler(loop: asyncio.AbstractEventLoop, fut: asyncio.Future):
    """A callback the native side calls from its own thread."""

    def settle(status: int, raw: Optional[bytes]) -> None:
        def set_result() -> None:
            if not fut.done():
                fut.set_result((status, raw))

        if not loop.is_closed():
            loop.call_soon_threadsafe(set_result)

    return settle


class Gateway:
    """A gateway in this process.

    ``config`` is a TOML configuration (the server's format, checked the
    same way; ``ConfigError`` lists every problem with its line and
    column), or ``None`` for the embedded default. ``api_key`` is the key
    calls present when they name none (needed when ``[[keys]]`` are set).
    One gateway may be used from many threads and tasks at once.
    """

    def __init__(self, config: Optional[str] = None, *, api_key: Optional[str] = None):
        try:
            self._native = _sluice.Native(config)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if api_key is not None:
            self._native.set_api_key(api_key)
        self._address: Optional[str] = None
        self._admin_address: Optional[str] = None

    # -- blocking ---------------------------------------------------------

    def chat(self, request: Mapping[str, Any], **opts: Any) -> Dict[str, Any]:
        """A chat completion (OpenAI request and response dicts)."""
        return self.request(CHAT, request, **opts)

    def predict(self, request: Mapping[str, Any], **opts: Any) -> Dict[str, Any]:
        """A local model's prediction (``POST /v1/predict``)."""
        return self.request(PREDICT, request, **opts)

    def request(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        api_key: Optional[str] = None,
        timeout: Optional[float] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Dict[str, Any]:
        """Any JSON POST of the API, e.g. ``"/v1/embeddings"`` or
        ``"/v1/messages"``; ``timeout`` in seconds bounds the whole call."""
        status, raw = self._native.call(path, _body(body), api_key, _ms(timeout), _header_list(headers))
        return _reply(status, raw)

    def stream(self, request: Mapping[str, Any], *, path: str = CHAT, api_key: Optional[str] = None,
               timeout: Optional[float] = None, headers: Optional[Mapping[str, str]] = None) -> ChunkStream:
        """The chunks of a streamed answer (``"stream": true`` is set)."""
        return ChunkStream(
            self._native.open_stream(path, _body(request), api_key, _ms(timeout), _header_list(headers))
        )

    # -- asyncio ----------------------------------------------------------

    async def achat(self, request: Mapping[str, Any], **opts: Any) -> Dict[str, Any]:
        return await self.arequest(CHAT, request, **opts)

    async def apredict(self, request: Mapping[str, Any], **opts: Any) -> Dict[str, Any]:
        return await self.arequest(PREDICT, request, **opts)

    async def arequest(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        api_key: Optional[str] = None,
        timeout: Optional[float] = None,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Dict[str, Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        task = self._native.call_async(
            path, _body(body), _settler(loop, fut), api_key, _ms(timeout), _header_list(headers)
        )
        try:
            status, raw = await fut
        except asyncio.CancelledError:
            task.cancel()
            raise
        return _reply(status, raw)

    def astream(self, request: Mapping[str, Any], *, path: str = CHAT, api_key: Optional[str] = None,
                timeout: Optional[float] = None, headers: Optional[Mapping[str, str]] = None) -> AsyncChunkStream:
        return AsyncChunkStream(
            self._native.open_stream(path, _body(request), api_key, _ms(timeout), _header_list(headers))
        )

    # -- serving ----------------------------------------------------------

    def serve(self, listen: str = "127.0.0.1:0", admin_listen: Optional[str] = None) -> str:
        """Also serves HTTP (the API at ``listen``; port 0 picks one) on the
        gateway's threads; returns ``"host:port"``. The admin API (metrics)
        listens at ``admin_listen`` or a free loopback port."""
        self._address, self._admin_address = self._native.serve(listen, admin_listen)
        return self._address

    @property
    def address(self) -> Optional[str]:
        return self._address

    @property
    def admin_address(self) -> Optional[str]:
        return self._admin_address

    def stop(self) -> None:
        """Stops serving HTTP; in-process calls go on working."""
        self._native.stop()
        self._address = self._admin_address = None

    def metrics(self) -> str:
        """The Prometheus metrics the admin port's ``/metrics`` shows."""
        return self._native.metrics()

    def reload(self, config: str) -> None:
        """Swaps in a new configuration, as the server's hot reload does:
        what did not change keeps its state (breakers, connection pools,
        rate-limit buckets). A refused one raises ``ConfigError`` and the
        running configuration stays."""
        try:
            self._native.reload(config)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def set_api_key(self, key: Optional[str]) -> None:
        self._native.set_api_key(key)

    def close(self) -> None:
        """Stops serving. The gateway's threads end when it is dropped."""
        self.stop()

    def __enter__(self) -> "Gateway":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
