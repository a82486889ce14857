"""A WHIP publisher or WHEP viewer in its own process, so a test can make it vanish (SIGKILL: no DTLS close, no
DELETE, no more RTCP).

    python -m tests.webrtc_client_proc http://127.0.0.1:PORT STREAM [publish|view]

Prints `connected` once ICE/DTLS is up (a viewer: once its first frame arrived), then streams synthetic video (or
keeps receiving) until killed."""

from __future__ import annotations

import asyncio
import sys

from tests.webrtc_harness import WhipClient, wait_frames, whep_view, whip_publish


async def main(base: str, stream: str, mode: str) -> None:
    client: WhipClient = await (whip_publish(base, stream) if mode == "publish" else whep_view(base, stream))
    if client.status != 201:
        print(f"refused {client.status}: {client.body}", flush=True)
        return
    while client.pc.connectionState != "connected":
        await asyncio.sleep(0.02)
    if mode == "view":
        await wait_frames(client.rx, 1, timeout=30)
    print("connected", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "publish"))
