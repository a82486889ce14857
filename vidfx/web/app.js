// The vidfx page: webcam → WebRTC (POST /offer) → the node → stylised video back on the same connection,
// steered over the `control` data channel with the node's msgpack control messages; stats come back on it.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("state"), model: $("model"), stream: $("stream"), camera: $("camera"), output: $("output"),
  start: $("start"), stop: $("stop"), pause: $("pause"), tokenRow: $("token-row"), token: $("token"), audio: $("audio"),
  form: $("prompt-form"), prompt: $("prompt"), looks: $("looks"),
  strength: $("strength"), strengthValue: $("strength-value"), steps: $("steps"), stepsValue: $("steps-value"),
  fpsIn: $("fps-in"), fpsOut: $("fps-out"), p50: $("lat-p50"), p95: $("lat-p95"), drops: $("drops"),
  size: $("size"), message: $("message"),
};

// State the page (and tests) can read: window.vidfx.
const vidfx = {
  config: null, pc: null, channel: null, camera: null, peer: null, stream: null, paused: false,
  state: "idle", stats: null, replies: [], nextId: 1,
};
window.vidfx = vidfx;

function setState(state, text) {
  vidfx.state = state;
  ui.state.className = "pill " + state;
  ui.state.textContent = text || state;
}

function say(text, isError = false) {
  ui.message.textContent = text;
  ui.message.className = isError ? "muted error" : "muted";
}

function token() {
  return ui.token.value || sessionStorage.getItem("vidfx-token") || "";
}

function authHeaders(extra = {}) {
  const t = token();
  return t ? { ...extra, Authorization: "Bearer " + t } : extra;
}

// -- config ------------------------------------------------------------------------------------------------------

async function loadConfig() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    sessionStorage.setItem("vidfx-token", hash.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  ui.token.value = sessionStorage.getItem("vidfx-token") || "";
  const r = await fetch("/config.json", { headers: authHeaders() });
  const cfg = await r.json();
  vidfx.config = cfg;
  ui.tokenRow.hidden = !cfg.auth_required;
  ui.model.textContent = cfg.model ? "model: " + cfg.model : "model loading…";
  const d = cfg.defaults;
  ui.prompt.value = d.prompt || "";
  ui.strength.value = d.strength;
  ui.strengthValue.textContent = Number(d.strength).toFixed(2);
  ui.steps.max = Math.max(4, d.steps.length);
  ui.steps.value = d.steps.length;
  ui.stepsValue.textContent = d.steps.length;
  ui.looks.replaceChildren(...cfg.looks.map((look) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = look;
    b.addEventListener("click", () => {
      ui.prompt.value = look;
      applyPrompt();
    });
    return b;
  }));
}

// -- connection ----------------------------------------------------------------------------------------------------

function waitIceGathering(pc, timeoutMs) {
  // The node does not take trickled candidates: send the offer with every candidate gathered (or what we have
  // after the timeout, which host candidates alone always beat).
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, timeoutMs);
  });
}

async function start() {
  ui.start.disabled = true;
  setState("connecting", "starting camera");
  say("");
  try {
    if (ui.token.value) sessionStorage.setItem("vidfx-token", ui.token.value);
    await loadConfig();
    if (vidfx.config.auth_required && !vidfx.config.authorised) throw new Error("this node needs a valid token");
    vidfx.camera = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } },
      audio: ui.audio.checked, // off by default: your own voice comes back (delayed with the video)
    });
    ui.camera.srcObject = new MediaStream(vidfx.camera.getVideoTracks()); // no local echo of the microphone

    setState("connecting", "connecting");
    const pc = new RTCPeerConnection({ iceServers: vidfx.config.ice_servers || [] });
    vidfx.pc = pc;
    const [track] = vidfx.camera.getVideoTracks();
    pc.addTransceiver(track, { direction: "sendrecv", streams: [vidfx.camera] });
    const [mic] = vidfx.camera.getAudioTracks();
    if (mic) pc.addTransceiver(mic, { direction: "sendrecv", streams: [vidfx.camera] }); // comes back in sync
    const output = new MediaStream();
    ui.output.srcObject = output;
    pc.addEventListener("track", (e) => {
      output.addTrack(e.track);
      if (e.track.kind === "audio") ui.output.muted = false; // the user asked for it (a click started this)
    });
    pc.addEventListener("connectionstatechange", () => {
      const s = pc.connectionState;
      if (s === "connected") setState("live", "live");
      else if (s === "failed" || s === "closed") { setState("error", s); stop(false); }
      else if (s === "disconnected") setState("connecting", "reconnecting");
    });
    const channel = pc.createDataChannel("control");
    channel.binaryType = "arraybuffer";
    vidfx.channel = channel;
    channel.addEventListener("message", onMessage);
    channel.addEventListener("open", () => sendSettings());

    await pc.setLocalDescription(await pc.createOffer());
    await waitIceGathering(pc, 2000);
    const r = await fetch("/offer", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer" }),
    });
    if (!r.ok) throw new Error(`the node refused the call (${r.status}): ${(await r.text()).trim()}`);
    const answer = await r.json();
    vidfx.peer = answer.peer;
    vidfx.stream = answer.stream;
    ui.stream.textContent = "· " + answer.stream;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    ui.stop.disabled = false;
    ui.pause.disabled = false;
  } catch (err) {
    setState("error", "error");
    say(err.message || String(err), true);
    await stop(false);
  }
}

async function stop(userAction = true) {
  const { pc, peer } = vidfx;
  vidfx.pc = null;
  vidfx.channel = null;
  vidfx.peer = null;
  if (peer && userAction) {
    fetch("/offer/" + peer, { method: "DELETE", headers: authHeaders() }).catch(() => {});
  }
  if (pc) pc.close();
  if (vidfx.camera) vidfx.camera.getTracks().forEach((t) => t.stop());
  vidfx.camera = null;
  ui.camera.srcObject = null;
  ui.output.srcObject = null;
  ui.start.disabled = false;
  ui.stop.disabled = true;
  ui.pause.disabled = true;
  if (userAction) setState("idle");
}

// -- control channel ------------------------------------------------------------------------------------------------

function send(msg) {
  const ch = vidfx.channel;
  if (!ch || ch.readyState !== "open") return false;
  msg.id = vidfx.nextId++;
  ch.send(msgpack.encode(msg));
  return true;
}

function stepList(n) {
  const d = vidfx.config.defaults.steps;
  if (n === d.length) return d.slice();
  // n steps spread evenly over the 0..1000 grid, starting at pure noise (strength trims the top).
  return Array.from({ length: n }, (_, i) => Math.round(1000 * (1 - i / n)));
}

function sendSettings() {
  send({ op: "set", prompt: ui.prompt.value, strength: Number(ui.strength.value),
         steps: stepList(Number(ui.steps.value)) });
}

function applyPrompt() {
  for (const b of ui.looks.children) b.classList.toggle("active", b.textContent === ui.prompt.value);
  if (!send({ op: "set", prompt: ui.prompt.value })) say("start the camera first; the look applies once live");
}

function onMessage(e) {
  let msg;
  try {
    msg = msgpack.decode(e.data);
  } catch (err) {
    say("undecodable message from the node: " + err.message, true);
    return;
  }
  if (msg.event === "stats") {
    vidfx.stats = msg;
    ui.fpsIn.textContent = msg.fps_in.toFixed(1);
    ui.fpsOut.textContent = msg.fps_out.toFixed(1);
    ui.p50.textContent = msg.latency_ms.p50 == null ? "–" : Math.round(msg.latency_ms.p50) + " ms";
    ui.p95.textContent = msg.latency_ms.p95 == null ? "–" : Math.round(msg.latency_ms.p95) + " ms";
    const drops = Object.values(msg.dropped).reduce((a, b) => a + b, 0);
    ui.drops.textContent = String(drops);
    ui.drops.title = JSON.stringify(msg.dropped);
    ui.size.textContent = msg.size ? msg.size.join("×") : "–";
    return;
  }
  vidfx.replies.push(msg);
  if (!msg.ok) say("the node said: " + msg.error, true);
  else if (msg.op === "set") say("applied: " + msg.applied.join(", "));
}

// -- wiring ---------------------------------------------------------------------------------------------------------

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", () => stop(true));
ui.pause.addEventListener("click", () => {
  vidfx.paused = !vidfx.paused;
  send({ op: vidfx.paused ? "pause" : "resume" });
  ui.pause.textContent = vidfx.paused ? "Resume" : "Pause";
});
ui.form.addEventListener("submit", (e) => {
  e.preventDefault();
  applyPrompt();
});
ui.strength.addEventListener("input", () => { ui.strengthValue.textContent = Number(ui.strength.value).toFixed(2); });
ui.strength.addEventListener("change", () => send({ op: "set", strength: Number(ui.strength.value) }));
ui.steps.addEventListener("input", () => { ui.stepsValue.textContent = ui.steps.value; });
ui.steps.addEventListener("change", () => send({ op: "set", steps: stepList(Number(ui.steps.value)) }));
window.addEventListener("pagehide", () => stop(true));

loadConfig().catch((err) => say("cannot reach the node: " + err.message, true));
