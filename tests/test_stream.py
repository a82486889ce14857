"""The streaming node's parts in-process: settings, wire protocol, pipeline, control handler, engine."""

from __future__ import annotations

import argparse
import dataclasses
import json

import msgpack
import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from tests.conftest import randomized_dit
from tests.serve_harness import make_video
from vidfx.autoencoder.loading import save_autoencoder
from vidfx.autoencoder.refiner import REFINER_FILE, save_refiner
from vidfx.config import (
    LimitSettings,
    ModelSettings,
    Settings,
    add_settings_flags,
    is_loopback_address,
    settings_from_args,
)
from vidfx.frames import frames_to_tensor
from vidfx.loading import load_pipeline
from vidfx.pipeline import (
    ChunkRequest,
    StreamParams,
    StylePipeline,
    motion_strength,
)
from vidfx.protocol import ProtocolError, SetOp, frame_header, parse_control, parse_frame
from vidfx.sampling import chunk_sigmas, step_sigmas
from vidfx.stream.control import ControlHandler, RateLimiter
from vidfx.stream.engine import Engine
from vidfx.text.base import interpolate

LIMITS = LimitSettings()


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(1)
    return load_pipeline(ModelSettings())


def chunks_of(video: np.ndarray, n_first: int = 1, n: int = 4) -> list[np.ndarray]:
    out, i = [video[:n_first]], n_first
    while i + n <= len(video):
        out.append(video[i : i + n])
        i += n
    return out


# -- settings ------------------------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_settings_flags(p)
    return p.parse_args(argv)


def test_settings_precedence_flags_env_dotenv_defaults(tmp_path, monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("VIDFX_"):
            monkeypatch.delenv(k)
    env_file = tmp_path / ".env"
    env_file.write_text("VIDFX_MODEL__STRENGTH=0.5\nVIDFX_ZMQ__RCVHWM=3\nVIDFX_STREAM__PROMPT=from dotenv\n")
    s = settings_from_args(_parse(["--env-file", str(env_file)]))
    assert (s.model.strength, s.zmq.rcvhwm, s.stream.prompt) == (0.5, 3, "from dotenv")
    assert s.model.width == ModelSettings().width  # untouched defaults survive nested merging
    monkeypatch.setenv("VIDFX_MODEL__STRENGTH", "0.6")
    s = settings_from_args(_parse(["--env-file", str(env_file)]))
    assert s.model.strength == 0.6 and s.zmq.rcvhwm == 3
    flags = ["--model-strength", "0.8", "--model-steps", "1000", "500"]
    s = settings_from_args(_parse(["--env-file", str(env_file), *flags]))
    assert s.model.strength == 0.8 and s.model.steps == [1000, 500] and s.zmq.rcvhwm == 3
    s = settings_from_args(_parse(["--env-file", str(tmp_path / "missing.env"), "--no-stream-motion-aware"]))
    assert s.model.strength == 0.6 and s.stream.motion_aware is False
    with pytest.raises(ValidationError):
        settings_from_args(_parse(["--model-strength", "1.5"]))


def test_help_lists_every_setting_with_default_and_env_var():
    p = argparse.ArgumentParser()
    add_settings_flags(p)
    text = p.format_help().replace("\n", " ")
    text = " ".join(text.split())
    for section in ("model", "stream", "zmq", "http", "limits", "accel"):
        model = type(getattr(Settings(), section))
        for name in model.model_fields:
            flag = f"--{section}-{name}".replace("_", "-")
            assert flag in text, flag
            assert f"VIDFX_{section.upper()}__{name.upper()}" in text.replace("VIDFX_ ", "VIDFX_"), name
    assert "--token" in text and "--log-level" in text


def test_loopback_detection():
    assert is_loopback_address("tcp://127.0.0.1:*") and is_loopback_address("tcp://[::1]:5555")
    assert is_loopback_address("ipc:///tmp/x") and is_loopback_address("localhost")
    assert not is_loopback_address("tcp://0.0.0.0:5555") and not is_loopback_address("tcp://*:5555")
    assert not is_loopback_address("tcp://eth0:5555") and not is_loopback_address("tcp://example.org:1")


# -- protocol --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        ({"op": "set", "stream": "a", "seed": True}, "seed"),  # bool is not an int here
        ({"op": "set", "stream": "a", "strength": 0}, "strength"),
        ({"op": "set", "stream": "a", "prompt": "x", "prompts": [{"text": "y", "weight": 1}]}, "not both"),
        ({"op": "set", "stream": "a", "prompts": [{"text": "y", "weight": 0}]}, "must not all be zero"),
        ({"op": "set", "stream": "a", "prompts": [{"text": "y"}]}, "weight"),
        ({"op": "set", "stream": "a", "steps": list(range(1000, 0, -100))}, "more than the limit"),
        ({"op": "set", "stream": "s" * 200, "seed": 1}, "stream id must be 1-128 characters"),
        ({"op": "set", "stream": ""}, "stream"),
        ({"op": 3}, "unknown op"),
        ({"stream": "a"}, "unknown op None"),
        ({"op": "status", "verbose": True}, "verbose"),
    ],
)
def test_control_validation_errors(obj, needle):
    with pytest.raises(ProtocolError, match=needle):
        parse_control(msgpack.packb(obj), LIMITS)


def test_control_valid_messages_and_unpack_limits():
    msg = parse_control(msgpack.packb({"op": "set", "stream": "a", "prompts": [
        {"text": "a", "weight": 2}, {"text": "b", "weight": 1.5}], "transition_s": 2, "id": "q1"}), LIMITS)  # fmt: skip
    assert isinstance(msg, SetOp) and msg.weighted_prompts() == (("a", 2.0), ("b", 1.5)) and msg.transition_s == 2.0
    deep = b"\x91" * 5000 + b"\xc0"  # 5000 nested arrays
    with pytest.raises(ProtocolError, match="expected a msgpack map|malformed"):
        parse_control(deep, LIMITS)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        parse_control(b"\x80" + b"\0" * LIMITS.max_control_bytes, LIMITS)
    huge_claim = b"\xdf\xff\xff\xff\xff"  # a map claiming 4 billion entries in 5 bytes
    with pytest.raises(ProtocolError, match="malformed"):
        parse_control(huge_claim, LIMITS)


def _vidfx_imports(path) -> set[str]:
    """Every vidfx module a file imports, TYPE_CHECKING blocks included (a cycle there is still a cycle)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("vidfx"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vidfx")}
    return found


def test_transports_and_stream_never_import_the_node():
    """vidfx.node wires transports together; they (and the engine) must not import it back (issue 19)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "vidfx"
    files = [*root.joinpath("transport").glob("*.py"), *root.joinpath("webrtc").glob("*.py"),
             *root.joinpath("stream").glob("*.py")]  # fmt: skip
    assert len(files) > 8
    offenders = {f.name: sorted(i) for f in files if (i := {m for m in _vidfx_imports(f) if m == "vidfx.node"})}
    assert offenders == {}
    assert "vidfx.transport.http" in _vidfx_imports(root / "node.py")  # the direction that is allowed


def test_frame_header_checks():
    h = parse_frame(frame_header("cam", 5, -7, 4, 2), b"\0" * 24, LIMITS)
    assert (h.stream, h.seq, h.pts_us, h.w, h.h, h.key) == ("cam", 5, -7, 4, 2, None)
    assert parse_frame(frame_header("cam", 5, 0, 4, 2, key="k" * 16), b"\0" * 24, LIMITS).key == "k" * 16
    with pytest.raises(ProtocolError, match="payload of 23 bytes"):
        parse_frame(frame_header("cam", 5, 0, 4, 2), b"\0" * 23, LIMITS)
    big = msgpack.packb({"v": 1, "stream": "c", "seq": 0, "pts_us": 0, "w": 4096, "h": 4096, "fmt": "rgb24"})
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        parse_frame(big, b"", LIMITS)
    for bad in ({"v": 2}, {"fmt": "yuv420p"}, {"seq": -1}, {"w": "4"}, {"extra": 1}):
        header = {"v": 1, "stream": "c", "seq": 0, "pts_us": 0, "w": 4, "h": 2, "fmt": "rgb24", **bad}
        with pytest.raises(ProtocolError, match="bad frame header"):
            parse_frame(msgpack.packb(header), b"\0" * 24, LIMITS)


# -- pipeline ------------------------------------------------------------------------------------------------------


def test_chunk_sigmas_continue_the_grid():
    steps = (1000, 757, 522)
    assert chunk_sigmas(steps, 1.0) == pytest.approx(step_sigmas(steps))
    assert chunk_sigmas(steps, 0.757) == pytest.approx(step_sigmas((757, 522)))
    mid = chunk_sigmas(steps, 0.6)
    assert len(mid) == 2 and step_sigmas((757,))[0] > mid[0] > mid[1] == pytest.approx(step_sigmas((522,))[0])
    assert len(chunk_sigmas(steps, 0.3)) == 1


def test_motion_strength_more_noise_when_still():
    p = StreamParams(strength=0.6, motion_range=0.2, motion_ref=0.05)
    assert motion_strength(0.0, p) == pytest.approx(0.8)
    assert motion_strength(0.05, p) == pytest.approx(0.4)
    assert motion_strength(1.0, p) == pytest.approx(0.4)
    assert motion_strength(0.0, p.with_(strength=0.95)) == 1.0
    vals = [motion_strength(m, p) for m in np.linspace(0, 0.06, 7)]
    assert all(a >= b for a, b in zip(vals, vals[1:], strict=False))


def test_motion_aware_strength_follows_the_scene(pipe):
    params = StreamParams(motion_aware=True, strength=0.6, motion_range=0.2)
    still = np.repeat(make_video(1), 9, axis=0)
    moving = make_video(9, seed=5)
    moving[1::2] = 255 - moving[1::2]  # large frame differences
    levels = {}
    for name, video in (("still", still), ("moving", moving)):
        st = pipe.new_stream_state(params)
        for c in chunks_of(video):
            pipe.process_chunk(st, c, params)
        levels[name] = st.last_strength
    assert levels["still"] == pytest.approx(0.8) and levels["moving"] == pytest.approx(0.4)


def test_batched_streams_equal_streams_run_alone(pipe):
    video = make_video(13)
    pa = StreamParams(prompts=(("a red fox", 1.0),), seed=1)
    pb = StreamParams(prompts=(("a harbour at night", 1.0),), seed=2)
    alone = {}
    for key, p in (("a", pa), ("b", pb)):
        st = pipe.new_stream_state(p)
        alone[key] = ([pipe.process_chunk(st, c, p) for c in chunks_of(video)], st)
    sa, sb = pipe.new_stream_state(pa), pipe.new_stream_state(pb)
    together = [pipe.process_chunks([ChunkRequest(sa, c, pa), ChunkRequest(sb, c, pb)]) for c in chunks_of(video)]
    for i, (oa, ob) in enumerate(together):
        assert np.abs(oa.astype(int) - alone["a"][0][i]).max() <= 1
        assert np.abs(ob.astype(int) - alone["b"][0][i]).max() <= 1
    assert torch.allclose(sa.kv.k, alone["a"][1].kv.k, atol=1e-4) and sa.kv.frames_seen == alone["a"][1].kv.frames_seen
    assert torch.allclose(sb.kv.v, alone["b"][1].kv.v, atol=1e-4)
    assert np.abs(together[-1][0].astype(int) - together[-1][1]).mean() > 0.3  # the prompts did differ


def test_a_source_conditioned_dit_sees_each_chunks_clean_latent(pipe):
    """in_dim = 2 · out_dim: every forward of a chunk (its steps and its cache write) gets the chunk's clean
    input latent as the condition, beside the noised latent."""
    cfg = dataclasses.replace(pipe.dit.cfg, in_dim=2 * pipe.dit.cfg.out_dim)
    dit = randomized_dit(cfg)
    conditioned = StylePipeline(dit, pipe.autoencoder, pipe.text, pipe.settings)
    seen: list[torch.Tensor] = []
    forward_chunk = dit.forward_chunk

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs.get("condition"))
        return forward_chunk(*args, **kwargs)

    dit.forward_chunk = recording  # type: ignore[method-assign]
    params = StreamParams(prompts=(("a red fox", 1.0),), strength=0.7)
    state = conditioned.new_stream_state(params)
    video = make_video(5)
    encoder = pipe.autoencoder.stream_encoder()
    for chunk in chunks_of(video):
        seen.clear()
        out = conditioned.process_chunk(state, chunk, params)
        assert out.shape == chunk.shape
        geometry = conditioned.geometry(chunk.shape[1:3])
        clean = encoder.encode(frames_to_tensor(chunk, geometry=geometry)).float()
        assert len(seen) == len(chunk_sigmas(params.steps, params.strength)) + 1  # the steps, the cache write
        for condition in seen:
            torch.testing.assert_close(condition, clean)


def test_prompt_change_reaches_the_next_chunk_and_transitions_interpolate(pipe):
    video = make_video(13)
    p1 = StreamParams(prompts=(("a red fox", 1.0),))
    p2 = p1.with_(prompts=(("a harbour at night", 1.0),))
    ref, changed = pipe.new_stream_state(p1), pipe.new_stream_state(p1)
    chunks = chunks_of(video)
    for c in chunks[:2]:
        assert np.array_equal(pipe.process_chunk(ref, c, p1), pipe.process_chunk(changed, c, p1))
    assert not np.array_equal(pipe.process_chunk(ref, chunks[2], p1), pipe.process_chunk(changed, chunks[2], p2))

    # Timed transition: 2 s from p1 to p2 starting at the chunk at t = 1 s; at t = 2 s we are half way.
    st = pipe.new_stream_state(p1)
    pipe.process_chunk(st, chunks[0], p1, pts_us=0)
    slow = p2.with_(transition_s=2.0, interpolation="slerp")
    pipe.process_chunk(st, chunks[1], slow, pts_us=1_000_000)
    assert torch.equal(st.cross_of, pipe.embed(p1.prompts))  # the transition starts where the stream was
    pipe.process_chunk(st, chunks[2], slow, pts_us=2_000_000)
    half = interpolate(pipe.embed(p1.prompts), pipe.embed(p2.prompts), 0.5, "slerp")
    assert torch.allclose(st.cross_of, half)
    pipe.process_chunk(st, chunks[3], slow, pts_us=3_500_000)
    assert torch.equal(st.cross_of, pipe.embed(p2.prompts))


def test_weighted_blend_and_reset(pipe):
    blend = pipe.embed((("a red fox", 3.0), ("a harbour at night", 1.0)))
    fox, harbour = pipe.embed((("a red fox", 1.0),)), pipe.embed((("a harbour at night", 1.0),))
    assert torch.allclose(blend, 0.75 * fox + 0.25 * harbour)
    video = make_video(9)
    p = StreamParams(prompts=(("a red fox", 1.0),), seed=4)
    st = pipe.new_stream_state(p)
    for c in chunks_of(video):
        pipe.process_chunk(st, c, p)
    st.reset()
    assert st.first and pipe.frames_per_chunk(st.first) == 1
    fresh = pipe.new_stream_state(p)
    for c in chunks_of(video[::-1].copy()):
        assert np.array_equal(pipe.process_chunk(st, c, p), pipe.process_chunk(fresh, c, p))


def test_weights_folder_loads_the_same_model(pipe, tmp_path):
    save_file({k: v.contiguous() for k, v in pipe.dit.state_dict().items()}, str(tmp_path / "dit.safetensors"))
    save_autoencoder(pipe.autoencoder, tmp_path / "autoencoder.safetensors")
    cfg = pipe.dit.cfg
    meta: dict = {"dit": {
        k: getattr(cfg, k)
        for k in ("dim", "ffn_dim", "freq_dim", "text_dim", "text_len", "in_dim", "num_heads", "num_layers")
    }}  # fmt: skip
    if pipe.refiner is not None:  # the shipped default's: its file and the resolution it renders at
        save_refiner(pipe.refiner, tmp_path / REFINER_FILE)
        meta |= {"refiner": REFINER_FILE, "settings": {"height": pipe.settings.height, "width": pipe.settings.width}}
    (tmp_path / "model.json").write_text(json.dumps(meta))
    loaded = load_pipeline(ModelSettings(name=str(tmp_path)))
    assert (loaded.refiner is None) == (pipe.refiner is None)
    video = make_video(5)
    a, b = pipe.new_stream_state(StreamParams()), loaded.new_stream_state(StreamParams())
    for c in chunks_of(video):
        assert np.array_equal(pipe.process_chunk(a, c), loaded.process_chunk(b, c))
    with pytest.raises(ValueError, match="unknown model"):
        load_pipeline(ModelSettings(name="no-such-model"))


# -- control handler and engine ---------------------------------------------------------------------------------------


def test_rate_limiter_buckets():
    rl = RateLimiter(rate=2.0, burst=3)
    assert [rl.allow("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert rl.allow("b", now=0.0)  # another client has its own bucket
    assert rl.allow("a", now=0.5) and not rl.allow("a", now=0.5)  # refilled by rate × 0.5 s = 1


async def test_control_handler_on_a_live_engine(pipe):
    settings = Settings(_env_file=None, stream={"flush_after_s": 0.05, "max_sessions": 2})
    engine = Engine(pipe, settings)
    settings.model.warmup_chunks = 0
    await engine.start()
    try:
        h = ControlHandler(engine, settings.limits, token="t" * 16)
        assert h.handle({"op": "status"}) == {"ok": False, "error": "unauthorized: missing or wrong token"}
        ok = h.handle({"op": "set", "stream": "s1", "prompt": "a red fox", "strength": 0.5, "steps": [900, 400],
                       "token": "t" * 16, "id": 9})  # fmt: skip
        assert ok["ok"] and ok["id"] == 9 and ok["applied"] == ["prompts", "steps", "strength"]
        params = engine.session("s1").params
        assert params.prompts == (("a red fox", 1.0),) and params.steps == (900, 400) and params.strength == 0.5
        h.handle({"op": "set", "stream": "s2", "seed": 1, "token": "t" * 16})
        full = h.handle({"op": "set", "stream": "s3", "seed": 1, "token": "t" * 16}, client="another")
        assert full["ok"] is False and "session slots" in full["error"]
        st = h.handle(msgpack.packb({"op": "status", "token": "t" * 16}))
        assert st["ok"] and sorted(st["sessions"]) == ["s1", "s2"] and st["sessions"]["s1"]["params"]["strength"] == 0.5
    finally:
        await engine.stop()


async def test_configured_stream_keys_are_demanded_never_handed_out(pipe):
    configured = "k" * 20
    settings = Settings(_env_file=None, stream={"keys": [f"cam={configured}"], "max_sessions": 4})
    settings.model.warmup_chunks = 0
    engine = Engine(pipe, settings)
    await engine.start()
    try:
        h = ControlHandler(engine, settings.limits)
        for extra in ({}, {"key": "w" * 20}):
            reply = h.handle({"op": "claim", "stream": "cam", **extra})
            assert reply["ok"] is False and "configured key" in reply["error"] and configured not in str(reply)
        assert engine.session("cam") is None
        assert h.handle({"op": "claim", "stream": "cam", "key": configured})["key"] == configured
        chosen = h.handle({"op": "claim", "stream": "other", "key": "c" * 16})
        third = h.handle({"op": "claim", "stream": "third"}, client="b")  # (2 unfed claims per client)
        assert chosen["key"] == "c" * 16 and len(third["key"]) >= 16
        assert "at least 16" in h.handle({"op": "claim", "stream": "short", "key": "c"}, client="c")["error"]
    finally:
        await engine.stop()
    with pytest.raises(ValueError, match="STREAM=KEY"):
        Settings(_env_file=None, stream={"keys": ["cam=short"]})


async def test_engine_overload_drops_oldest_and_accounts_for_every_frame(pipe):
    settings = Settings(_env_file=None, stream={"flush_after_s": 0.05})
    settings.model.warmup_chunks = 0
    engine = Engine(pipe, settings)
    await engine.start()
    try:
        session = engine.open_session("s")
        video = make_video(40)
        for i, frame in enumerate(video):  # all at once, no await: the model gets nothing done meanwhile
            session.submit(frame, i * 1000, i)
        # The first chunk (1 frame) and one regular chunk (4) may wait; everything older is dropped.
        assert len(session.pending) == 5 and session.dropped == {"overload": 35}
        out = []
        async for f in session.frames():
            out.append(f)
            if f.seq == 39:
                break
        assert [f.seq for f in out] == [35, 36, 37, 38, 39]  # the newest frames, in order, nothing older
        assert engine.metrics.dropped()["overload"] == 35 and session.frames_out == 5
        session.submit(video[0], 10**6, 45)
        assert session.dropped["gap"] == 5
    finally:
        await engine.stop()
    assert session.closed


def test_a_one_frame_first_chunk_starts_the_stream_on_the_first_camera_frame():
    """`first_chunk_latents=1` with 2-latent chunks: the stream starts on one frame (its stylised frame comes
    back without waiting for 5 camera frames), the cache then holds that frame, and later chunks are the usual
    8 frames attending to it. Text-to-video starts the same way."""
    torch.manual_seed(0)
    pipe = load_pipeline(ModelSettings(name="tiny-random", latent_frames_per_chunk=2, first_chunk_latents=1))
    assert (pipe.frames_per_chunk(True), pipe.frames_per_chunk(False)) == (1, 8)
    video = make_video(17)
    params = StreamParams(prompts=(("a red fox", 1.0),), seed=3)
    st = pipe.new_stream_state(params)
    outs = [pipe.process_chunk(st, c, params) for c in chunks_of(video, 1, 8)]
    assert [len(o) for o in outs] == [1, 8, 8]
    assert st.kv.frames_seen == 1 + 2 + 2
    with pytest.raises(ValueError, match=r"expected uint8 frames \(8, "):  # later chunks keep their size
        pipe.process_chunk(st, video[:1], params)
    assert load_pipeline(ModelSettings(name="tiny-random", latent_frames_per_chunk=2)).frames_per_chunk(True) == 5
    st_t2v = pipe.new_stream_state(params)
    assert pipe.generate_chunk(st_t2v, (32, 32)).shape[0] == 1 and st_t2v.kv.frames_seen == 1
    # What each chunk attends to: the last of `chunks_to_fill` chunks is the first to see a full cache.
    seen = [0, st_t2v.kv.visible_frames]
    for _ in range(pipe.chunks_to_fill() + 1):
        assert pipe.generate_chunk(st_t2v, (32, 32)).shape[0] == 8
        seen.append(st_t2v.kv.visible_frames)
    full = pipe.settings.sink_frames + pipe.settings.window_frames
    assert seen[pipe.chunks_to_fill() - 1] == full > seen[pipe.chunks_to_fill() - 2]
