"""A WHIP publisher in its own process, so a test can make it vanish (SIGKILL: no DTLS close, no DELETE).

    python -m tests.webrtc_client_proc http://127.0.0.1:PORT STREAM

Prints `connected` once ICE/DTLS is up, then streams synthetic video until killed."""

from __future__ import annotations

import asyncio
import sys

from tests.webrtc_harness import whip_publish


async def main(base: str, stream: str) -> None:
    client = await whip_publish(base, stream)
    if client.status != 201:
        print(f"refused {client.status}: {client.body}", flush=True)
        return
    while client.pc.connectionState != "connected":
        await asyncio.sleep(0.02)
    print("connected", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
