// A WHEP viewer of one stream, full window (an OBS Browser Source, a second screen):
//   /watch/<stream>            (add #token=... when the node needs one)
// Reconnects when the stream is not live yet or ends.
"use strict";

const stream = decodeURIComponent(location.pathname.split("/").pop());
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const video = document.getElementById("video");
const note = document.getElementById("note");
const watch = { state: "idle", resource: null };
window.vidfxWatch = watch;

function headers(extra = {}) {
  return token ? { ...extra, Authorization: "Bearer " + token } : extra;
}

async function play() {
  watch.state = "connecting";
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" }); // the publisher's audio, delayed to match the video
  const media = new MediaStream();
  video.srcObject = media;
  pc.addEventListener("track", (e) => {
    media.addTrack(e.track);
    if (e.track.kind === "audio") {
      // With sound where the browser allows it (OBS Browser Sources do); muted otherwise, never paused.
      video.muted = false;
      video.play().catch(() => { video.muted = true; video.play().catch(() => {}); });
    }
  });
  const ended = new Promise((resolve) => {
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "connected") { watch.state = "live"; note.textContent = ""; }
      if (["failed", "closed", "disconnected"].includes(pc.connectionState)) resolve();
    });
  });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
    setTimeout(resolve, 2000);
  });
  const r = await fetch("/whep/" + encodeURIComponent(stream), {
    method: "POST", headers: headers({ "Content-Type": "application/sdp" }), body: pc.localDescription.sdp,
  });
  if (r.status !== 201) {
    pc.close();
    throw new Error(`${r.status}: ${(await r.text()).trim()}`);
  }
  watch.resource = r.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
  await ended;
  pc.close();
}

async function loop() {
  for (;;) {
    try {
      await play();
      note.textContent = "stream ended; waiting for it…";
    } catch (err) {
      note.textContent = "waiting for stream " + stream + " (" + err.message + ")";
    }
    watch.state = "waiting";
    await new Promise((r) => setTimeout(r, 2000));
  }
}

window.addEventListener("pagehide", () => {
  if (watch.resource) fetch(watch.resource, { method: "DELETE", headers: headers(), keepalive: true });
});
loop();
