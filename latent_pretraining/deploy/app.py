"""The server's FastAPI app: ``POST /act`` (OpenVLA's REST convention), the websocket at ``/``
(openpi's), ``GET /healthz``, ``GET /metadata`` and ``POST /reset``. A refused request is answered
with its 4xx status and ``{"error": "..."}`` (on the websocket: a text frame, then close 1011, as
openpi's server does); the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from latent_pretraining.deploy.batching import Answer, Batcher
from latent_pretraining.deploy.codecs import dumps_json, loads_json, pack_frame, unpack_frame
from latent_pretraining.deploy.protocol import Query, RequestError, action, frame, full, metadata, parse_query
from latent_pretraining.policy.policy import Policy

logger = logging.getLogger(__name__)

WARMING_UP = "the server is warming up (compiling the model); poll GET /healthz until it answers 200"
DRAIN_FACTOR = 4  # an oversized body is read (and dropped) up to this many limits, so the client hears 413


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; a RequestError (413) when it is longer than ``limit`` bytes."""
    too_long = RequestError(413, f"the body is longer than {limit} bytes (--max_body_bytes)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        raise too_long
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > DRAIN_FACTOR * limit:
            break
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise too_long
    return b"".join(chunks)


def rest_payload(body: bytes) -> tuple[object, bool]:
    """The decoded JSON of an ``/act`` body, and whether it came ``{"encoded": "<json_numpy text>"}``."""
    try:
        payload = loads_json(body)
        encoded = isinstance(payload, dict) and "encoded" in payload
        if encoded:
            if not isinstance(payload["encoded"], str):
                raise ValueError("'encoded' must be a string of json_numpy JSON")
            payload = loads_json(payload["encoded"])
    except ValueError as e:
        raise RequestError(400, f"the body is not JSON of a request: {e}") from None
    return payload, encoded


def create_app(
    policy: Policy, batcher: Batcher, image_root: Path | None = None, max_body_bytes: int = 16 << 20
) -> FastAPI:
    """The app serving ``policy`` through ``batcher``; image paths are read only under ``image_root``."""
    app = FastAPI(title="LAPA policy server", docs_url=None, redoc_url=None, openapi_url=None)
    served = metadata(policy, batcher.sizes, batcher.wait_s)

    async def answer(query: Query) -> Answer:
        if not batcher.ready.is_set():
            raise RequestError(503, WARMING_UP)
        try:
            return await asyncio.wrap_future(batcher.submit(query.image, query.instruction))
        except ValueError as e:  # the policy refuses this request (say, a prompt too long for the model)
            raise RequestError(400, f"the policy refused the request: {e}") from None

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if batcher.ready.is_set():
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "warming up"}, status_code=503)

    @app.get("/metadata")
    async def get_metadata() -> JSONResponse:
        return JSONResponse(served)

    @app.post("/reset")
    async def reset() -> JSONResponse:
        return JSONResponse({"reset": True, "note": "the server keeps no state between requests"})

    @app.post("/act")
    async def act(request: Request) -> Response:
        start = time.perf_counter()
        try:
            payload, encoded = rest_payload(await read_body(request, max_body_bytes))
            query = parse_query(payload, image_root)
            result = await answer(query)
            if query.form == "full":
                text = json.dumps(full(result, policy, time.perf_counter() - start))
            else:
                text = dumps_json(action(result))
        except RequestError as e:
            return error(e.status, e.message)
        except Exception as e:
            logger.exception("POST /act failed")
            return error(500, f"internal error: {type(e).__name__}: {e}")
        return Response(json.dumps(text) if encoded else text, media_type="application/json")

    @app.websocket("/")
    async def websocket(ws: WebSocket) -> None:
        await ws.accept()
        while not batcher.ready.is_set():
            await asyncio.sleep(0.05)
        try:
            await ws.send_bytes(pack_frame(served))
            while (message := await ws.receive())["type"] != "websocket.disconnect":
                start = time.perf_counter()
                try:
                    if message.get("bytes") is None:
                        raise RequestError(400, "expected a binary msgpack-numpy frame, got a text frame")
                    try:
                        query = parse_query(unpack_frame(message["bytes"]), image_root)
                    except ValueError as e:
                        raise RequestError(400, str(e)) from None
                    result = await answer(query)
                    reply = frame(result, query.form, time.perf_counter() - start)
                except RequestError as e:
                    await ws.send_text(f"error {e.status}: {e.message}")
                    await ws.close(1011, "bad request; the previous frame says why")
                    return
                except Exception:
                    logger.exception("a websocket request failed")
                    await ws.send_text(traceback.format_exc())
                    await ws.close(1011, "internal server error; the previous frame holds the traceback")
                    return
                await ws.send_bytes(pack_frame(reply))
        except WebSocketDisconnect:
            return

    return app
