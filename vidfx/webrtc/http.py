"""HTTP side of WebRTC on the node's aiohttp app: the page, `/offer` (JSON, for the page), WHIP and WHEP.

    GET  /                          the page (vidfx/web/), and its assets under /static/
    GET  /watch/{stream}            a full-window WHEP viewer of one stream (e.g. an OBS Browser Source)
    GET  /config.json               looks, defaults and whether a token is needed (ICE servers once authorised)
    POST /offer                     {"sdp", "type": "offer", "stream"?, "key"?}
                                    → {"sdp", "type": "answer", "peer", "stream", "key"}
    DELETE /offer/{peer}            hang up
    POST /whip[/{stream}][?key=K]   RFC 9725: application/sdp offer → 201 + Location + answer (ICE gathered),
                                    and the stream's key in X-Vidfx-Stream-Key
    DELETE /whip/{stream}/{peer}    end the WHIP session
    POST /whep/{stream}             a viewer's offer → 201 + Location + answer (the stylised stream)
    DELETE /whep/{stream}/{peer}    end the viewer
    GET  /webrtc/status             peers, slots and per-stream output counters

Every signalling route takes `Authorization: Bearer <token>` when the node has a token (always when HTTP is
bound beyond loopback). Trickle ICE and ICE restarts (PATCH) are not supported: 405 on the session URL.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from aiohttp import web

from vidfx.config import Settings
from vidfx.stream.engine import Engine
from vidfx.transport.auth import check_bearer
from vidfx.webrtc.gateway import Peer, SignallingError, WebRTCGateway, link_headers

GATEWAY_KEY: web.AppKey[WebRTCGateway] = web.AppKey("webrtc")
DEFAULT_LOOKS = ("pencil sketch", "pixel art", "thermal camera", "neon edges", "watercolor", "vintage sepia")
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
SDP = "application/sdp"
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag, Accept-Post",
}


def _error(status: int, reason: str, **headers: str) -> web.Response:
    """A plain-text refusal whose body says why (WHIP clients such as OBS show it in their log)."""
    return web.Response(status=status, text=reason + "\n", headers={**_CORS, **headers})


def _unauthorized() -> web.Response:
    return _error(401, "unauthorized: missing or wrong bearer token", **{"WWW-Authenticate": 'Bearer realm="vidfx"'})


def _authorised(request: web.Request) -> bool:
    return check_bearer(request.headers.get("Authorization"), request.app[GATEWAY_KEY].token)


def _web_file(name: str) -> bytes | None:
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    path = resources.files("vidfx").joinpath("web", name)  # package data (pyproject: web/**/*)
    return path.read_bytes() if path.is_file() else None


# -- page -----------------------------------------------------------------------------------------------------------


async def page(request: web.Request) -> web.Response:
    body = _web_file("index.html")
    if body is None:
        raise web.HTTPNotFound(text="the page is not installed (vidfx/web/index.html missing)")
    return web.Response(body=body, content_type="text/html", headers={"Cache-Control": "no-cache"})


async def watch(request: web.Request) -> web.Response:
    body = _web_file("watch.html")
    if body is None:
        raise web.HTTPNotFound(text="the viewer page is not installed (vidfx/web/watch.html missing)")
    return web.Response(body=body, content_type="text/html", headers={"Cache-Control": "no-cache"})


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    suffix = name[name.rfind(".") :] if "." in name else ""
    body = _web_file(name) if suffix in STATIC_TYPES else None
    if body is None:
        raise web.HTTPNotFound(text=f"no such asset: {name}")
    return web.Response(body=body, content_type=STATIC_TYPES[suffix], headers={"Cache-Control": "no-cache"})


async def config(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    s = gw.settings
    engine = gw.engine
    looks = list(getattr(engine.pipeline, "looks", None) or DEFAULT_LOOKS) if engine else list(DEFAULT_LOOKS)
    authorised = _authorised(request)
    # Without the token: what the page needs to draw itself and ask for the token (the model's looks and limits);
    # the operator's default prompt and the ICE (TURN) servers only to callers with the token. With no token
    # configured (loopback only) every caller is authorised.
    body: dict[str, Any] = {
        "auth_required": gw.token is not None,
        "authorised": authorised,
        "ready": bool(engine and engine.ready),
        "model": engine.pipeline.name if engine else None,
        "looks": looks,
        "defaults": {
            "prompt": s.stream.prompt if authorised else None,
            "strength": s.model.strength,
            "steps": list(s.model.steps),
        },
        "limits": {"max_steps": s.limits.max_steps, "max_prompt_chars": s.limits.max_prompt_chars},
        "stats_interval_s": s.webrtc.stats_interval_s,
    }
    if authorised:
        body["ice_servers"] = [
            {"urls": i.urls, **({"username": i.username, "credential": i.credential} if i.username else {})}
            for i in gw.ice
        ]
    return web.json_response(body)


# -- /offer (the page) ---------------------------------------------------------------------------------------------


async def offer(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _unauthorized()
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # deep nesting: a client error, not a 500
        return _error(400, 'expected a JSON body {"sdp": "...", "type": "offer"}')
    if not isinstance(data, dict) or not isinstance(data.get("sdp"), str) or data.get("type") != "offer":
        return _error(400, 'expected a JSON body {"sdp": "...", "type": "offer"}')
    stream, key = data.get("stream"), data.get("key")
    if stream is not None and not isinstance(stream, str):
        return _error(400, "stream must be a string")
    if key is not None and not isinstance(key, str):
        return _error(400, "key must be a string")
    gw = request.app[GATEWAY_KEY]
    try:
        peer = await gw.publish(data["sdp"], "offer", stream, key)
    except SignallingError as exc:
        return _error(exc.status, str(exc))
    local = peer.pc.localDescription
    body = {"sdp": local.sdp, "type": local.type, "peer": peer.id, "stream": peer.stream}
    if peer.session is not None:
        body["key"] = peer.session.key  # steers the stream from elsewhere (ZeroMQ control)
    return web.json_response(body)


async def offer_delete(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _unauthorized()
    gw = request.app[GATEWAY_KEY]
    peer = gw.find(request.match_info["peer"], role="publisher")
    if peer is None or peer.via != "offer":
        return _error(404, "no such peer")
    await gw.close_peer(peer, "hangup", "hung up by the client")
    return web.Response(status=204)


# -- WHIP / WHEP ------------------------------------------------------------------------------------------------------


async def _sdp_body(request: web.Request) -> str:
    if request.content_type != SDP:
        raise SignallingError(415, f"Content-Type must be {SDP}, got {request.content_type or 'none'}")
    raw = await request.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SignallingError(400, "the SDP offer is not UTF-8 text") from None


def _created(request: web.Request, peer: Peer, kind: str) -> web.Response:
    gw = request.app[GATEWAY_KEY]
    location = f"/{kind}/{peer.stream}/{peer.id}"
    resp = web.Response(status=201, text=peer.pc.localDescription.sdp, content_type=SDP)
    resp.headers.update(_CORS)
    resp.headers["Location"] = location
    resp.headers["ETag"] = f'"{peer.id}"'
    for value in link_headers(gw.ice):
        resp.headers.add("Link", value)
    return resp


async def whip_post(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _unauthorized()
    gw = request.app[GATEWAY_KEY]
    try:
        sdp = await _sdp_body(request)
        peer = await gw.publish(sdp, "whip", request.match_info.get("stream"), request.query.get("key"))
    except SignallingError as exc:
        return _error(exc.status, str(exc))
    resp = _created(request, peer, "whip")
    if peer.session is not None:
        resp.headers["X-Vidfx-Stream-Key"] = peer.session.key
    return resp


async def whep_post(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _unauthorized()
    gw = request.app[GATEWAY_KEY]
    try:
        sdp = await _sdp_body(request)
        peer = await gw.view(sdp, request.match_info["stream"])
    except SignallingError as exc:
        return _error(exc.status, str(exc))
    return _created(request, peer, "whep")


async def session_delete(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _unauthorized()
    gw = request.app[GATEWAY_KEY]
    kind = request.path.split("/")[1]
    role = "publisher" if kind == "whip" else "viewer"
    peer = gw.find(request.match_info["peer"], role=role, stream=request.match_info["stream"])
    if peer is None or peer.via != kind:
        return _error(404, f"no such {kind.upper()} session")
    await gw.close_peer(peer, "delete", "DELETE by the client")
    return web.Response(status=200, headers=_CORS)


async def session_patch(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _unauthorized()
    return _error(
        405,
        "trickle ICE and ICE restarts are not supported: send every candidate in the offer (non-trickle)",
        Allow="DELETE, OPTIONS",
    )


async def options(request: web.Request) -> web.Response:
    """CORS preflight; on the endpoints it also says what POST accepts (and the ICE servers, to authorised callers)."""
    resp = web.Response(status=204, headers=_CORS)
    if "peer" not in request.match_info:
        resp.headers["Accept-Post"] = SDP
        if _authorised(request):
            for value in link_headers(request.app[GATEWAY_KEY].ice):
                resp.headers.add("Link", value)
    return resp


async def status(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _unauthorized()
    return web.json_response(request.app[GATEWAY_KEY].status())


# -- wiring -------------------------------------------------------------------------------------------------------


def add_webrtc_routes(app: web.Application, settings: Settings, engine: Engine | None = None) -> WebRTCGateway:
    """Add the page, /offer, WHIP and WHEP to the node's app. Without `engine` (the node loads its model after
    binding HTTP), call `gateway.attach(engine)` once it exists; signalling answers 503 until then. The gateway
    closes its peers when the app shuts down."""
    gw = WebRTCGateway(settings)
    if engine is not None:
        gw.attach(engine)
    app[GATEWAY_KEY] = gw
    r = app.router
    r.add_get("/", page)
    r.add_get("/watch/{stream}", watch)
    r.add_get("/static/{name}", static)
    r.add_get("/config.json", config)
    r.add_post("/offer", offer)
    r.add_delete("/offer/{peer}", offer_delete)
    r.add_get("/webrtc/status", status)
    for path in ("/whip", "/whip/{stream}"):
        r.add_post(path, whip_post)
        r.add_route("OPTIONS", path, options)
    r.add_post("/whep/{stream}", whep_post)
    r.add_route("OPTIONS", "/whep/{stream}", options)
    for kind in ("whip", "whep"):
        r.add_delete(f"/{kind}/{{stream}}/{{peer}}", session_delete)
        r.add_patch(f"/{kind}/{{stream}}/{{peer}}", session_patch)
        r.add_route("OPTIONS", f"/{kind}/{{stream}}/{{peer}}", options)

    async def on_shutdown(_: web.Application) -> None:
        await gw.close()

    app.on_shutdown.append(on_shutdown)
    return gw
