"""The streaming node: one process wiring the engine to its transports, with an orderly start and stop.

Start: bind the HTTP server and the ZeroMQ sockets (so /healthz answers and endpoints are known at once) →
print a `listening` event → load the model and warm it up on the worker thread (/readyz turns 200) → start
the data and control loops → print a `ready` event. Stop (first SIGINT/SIGTERM): stop taking input, let the
model call in progress finish, close sessions and sockets, print `stopped`, exit 0. A second signal exits at
once. Events are JSON lines on stdout (for scripts and tests); logs go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from typing import Any

import torch
import zmq.asyncio
from aiohttp import web

from vidfx.accel import apply_acceleration
from vidfx.config import Settings, resolve_threads
from vidfx.loading import load_pipeline
from vidfx.stream.control import ControlHandler
from vidfx.stream.engine import Engine
from vidfx.stream.metrics import Metrics
from vidfx.transport.auth import ConfigError, node_token
from vidfx.transport.http import build_app
from vidfx.transport.zeromq import ZmqControl, ZmqDataPlane, curve_public_key
from vidfx.webrtc import ConfigError as WebRTCConfigError
from vidfx.webrtc import WebRTCGateway, add_webrtc_routes

log = logging.getLogger("vidfx.node")


__all__ = ["ConfigError", "Node", "required_token", "serve"]


def required_token(settings: Settings) -> str | None:
    """The node token every transport demands (`vidfx.transport.auth.node_token`), after checking the CURVE key."""
    token = node_token(settings)
    try:
        curve_public_key(settings)
    except (ValueError, zmq.ZMQError) as exc:
        raise ConfigError(f"zmq.curve_secret_key is not a Z85 CURVE secret key ({exc})") from None
    return token


def emit_event(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.token = required_token(settings)
        self.metrics = Metrics(settings.model.name, settings.model.device)
        self.engine: Engine | None = None
        self.app = build_app(self)
        self.webrtc: WebRTCGateway | None = None
        if settings.webrtc.enabled:
            try:
                self.webrtc = add_webrtc_routes(self.app, settings)  # the engine is attached once loaded
            except WebRTCConfigError as exc:
                raise ConfigError(str(exc)) from None
        self.ctx = zmq.asyncio.Context()
        self.data: ZmqDataPlane | None = None
        self.control: ZmqControl | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.endpoints: dict[str, str] = {}

    async def start(self) -> None:
        s = self.settings
        torch.set_num_threads(resolve_threads(s.model.threads))
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.http.host, s.http.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.endpoints["http"] = f"http://{host}:{port}"
        emit_event("listening", **self.endpoints)
        loop = asyncio.get_running_loop()
        # Seconds of work (minutes with accel.compile): off the loop.
        pipeline = await loop.run_in_executor(None, lambda: apply_acceleration(load_pipeline(s.model), s.accel))
        s.model = pipeline.settings  # with its release profile applied: new streams start at its steps
        self.engine = Engine(pipeline, s, self.metrics)
        self.data = ZmqDataPlane(self.ctx, self.engine, s, self.token)
        self.control = ZmqControl(self.ctx, ControlHandler(self.engine, s.limits, self.token), s)
        self.endpoints.update(
            input=self.data.input_endpoint, output=self.data.output_endpoint, control=self.control.endpoint
        )
        if (public := curve_public_key(s)) is not None:
            self.endpoints["curve_public_key"] = public
        await self.engine.start()
        if self.webrtc is not None:
            self.webrtc.attach(self.engine)
            self.endpoints.update(page=f"{self.endpoints['http']}/", whip=f"{self.endpoints['http']}/whip")
        self._tasks = [asyncio.create_task(self.data.run(), name="vidfx-zmq-data"),
                       asyncio.create_task(self.control.run(), name="vidfx-zmq-control")]  # fmt: skip
        emit_event("ready", model=pipeline.name, **self.endpoints)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.webrtc is not None:
            await self.webrtc.close()  # peers first: their sessions close while the engine still runs
        if self.engine is not None:
            await self.engine.stop()
        if self.data is not None:
            self.data.close()
        if self.control is not None:
            self.control.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self.ctx.term()


async def serve(settings: Settings) -> int:
    """Run the node until SIGINT/SIGTERM; 0 after a clean shutdown."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            sys.stderr.write(f"vidfx: second {signal.Signals(signum).name}, exiting now\n")
            os._exit(128 + signum)
        log.info("%s: shutting down (send it again to force)", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    node = Node(settings)
    start = asyncio.create_task(node.start())
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({start, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if start.done() and start.exception() is not None:
        waiter.cancel()
        await node.stop()
        raise start.exception()  # type: ignore[misc]
    await stop.wait()
    if not start.done():
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await start
    await node.stop()
    emit_event("stopped")
    return 0
