"""The node's one aiohttp application: health, readiness and Prometheus metrics.

Other HTTP transports (WHIP/WHEP signalling, the web page) add their routes to the same `web.Application`
(`node.app`); they find the engine, once loaded, as `request.app[NODE_KEY].engine`.

Unauthenticated on purpose: /healthz, /readyz and /metrics (probes and Prometheus scrapers carry no token; they
reveal counts, latencies and the model's name, never stream ids, prompts or keys).

This module knows the node only through `NodeState` (what the routes read), so it does not import
`vidfx.node`, which imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from aiohttp import web

if TYPE_CHECKING:
    from vidfx.stream.engine import Engine
    from vidfx.stream.metrics import Metrics


class NodeState(Protocol):
    """What the HTTP routes read of the node (`vidfx.node.Node` is one)."""

    @property
    def engine(self) -> Engine | None: ...

    @property
    def metrics(self) -> Metrics: ...


NODE_KEY: web.AppKey[NodeState] = web.AppKey("node")


async def healthz(request: web.Request) -> web.Response:
    """The process is up and its event loop answers."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """The model is loaded and warmed up: frames will be processed."""
    engine = request.app[NODE_KEY].engine
    if engine is not None and engine.ready:
        return web.json_response({"ready": True, "sessions": len(engine.sessions)})
    return web.json_response({"ready": False}, status=503)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[NODE_KEY].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


def build_app(node: NodeState) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[NODE_KEY] = node
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
