"""The detail refiner: what it computes, how the pipeline feeds it, how a weights folder carries it, and its
training (data from the model's own outputs, resumable)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidfx.autoencoder.refiner import (
    REFINER_FILE,
    DetailRefiner,
    RefinerConfig,
    frame_position,
    load_refiner,
    pooled_text,
    save_refiner,
)
from vidfx.commands.train_refiner import export_with_refiner
from vidfx.config import ModelSettings
from vidfx.data.looks import LOOKS, _radius
from vidfx.loading import MODEL_ALIASES, load_pipeline, resolve
from vidfx.pipeline import StreamParams, StylePipeline
from vidfx.train.eval import ssim_map
from vidfx.train.refiner import build_refiner_data, initial_refiner, load_shards, structure_loss, train_refiner
from vidfx.weights import CheckpointError

SMALL = RefinerConfig(channels=8, blocks=1)


def live(cfg: RefinerConfig = SMALL, seed: int = 0) -> DetailRefiner:
    """A refiner with every weight random (the zero head would make it the upsampled base)."""
    torch.manual_seed(seed)
    r = DetailRefiner(cfg).eval()
    with torch.no_grad():
        for p in r.parameters():
            p.normal_(0, 0.1)
    return r


def test_untrained_refiner_is_the_upsampled_base_and_the_guide_matters_once_trained() -> None:
    base = torch.rand(2, 3, 8, 12) * 2 - 1
    guide = torch.rand(2, 3, 16, 24) * 2 - 1
    up = F.interpolate(base, scale_factor=2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        fresh = DetailRefiner(SMALL).eval()
        for g in (guide, None):  # exactly, up to the [-1, 1] ↔ [0, 1] round trip around the textures
            torch.testing.assert_close(fresh(base, g), up.clamp(-1, 1), atol=1e-6, rtol=0)
        r = live()
        a, b, none = r(base, guide), r(base, guide.flip(-1)), r(base, None)
    assert a.shape == (2, 3, 16, 24)
    assert (a - b).abs().mean() > 1e-3 and (a - none).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="guide must be"):
        r(base, guide[..., :-2])


def test_screen_textures_are_fixed_to_the_screen_and_scale_with_the_frame() -> None:
    """A texture at 256 px sampled every other pixel is the texture at 128 px: periods are in 128-px units."""
    r = live(RefinerConfig(channels=8, blocks=1, periods=(4.0, 6.0)))
    like = torch.zeros(1)
    with torch.no_grad():
        big, small = r.textures((256, 352), like), r.textures((128, 176), like)
        assert r.textures((128, 176), like) is small  # built once per size in inference
    torch.testing.assert_close(big[:, ::2, ::2], small, atol=1e-5, rtol=0)


def test_save_load_roundtrip_and_a_foreign_file_is_refused(tmp_path: Path) -> None:
    r = live(RefinerConfig(channels=8, blocks=2, periods=(3.0,)))
    save_refiner(r, tmp_path / REFINER_FILE)
    back = load_refiner(tmp_path / REFINER_FILE)
    assert back.cfg == r.cfg
    base, guide = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(back(base, guide), r(base, guide))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a vidfx detail refiner"):
        load_refiner(tmp_path / "other.safetensors")


def test_prompt_conditioning_starts_neutral_and_then_the_prompt_steers_the_output() -> None:
    cfg = RefinerConfig(channels=8, blocks=2, text_dim=6)
    base, guide = torch.rand(2, 3, 8, 12) * 2 - 1, torch.rand(2, 3, 16, 24) * 2 - 1
    text = torch.randn(2, 6)
    up = F.interpolate(base, scale_factor=2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(DetailRefiner(cfg).eval()(base, guide, text), up.clamp(-1, 1), atol=1e-6, rtol=0)
        r = live(cfg)
        a, b = r(base, guide, text), r(base, guide, -text)
        assert (a - b).abs().mean() > 1e-3
        # one prompt for the whole batch (a stream's chunk) is the same prompt on every frame
        torch.testing.assert_close(r(base, guide, text[0]), r(base, guide, text[:1].expand(2, -1)))
    with pytest.raises(ValueError, match="pooled text embedding"):
        r(base, guide)
    # the hash encoder's rows are one word each, zero after the last: pooled is their sum, blends stay blends
    emb = torch.zeros(16, 6)
    emb[:3] = torch.randn(3, 6)
    torch.testing.assert_close(pooled_text(emb), emb[:3].sum(0))
    torch.testing.assert_close(pooled_text(0.25 * emb + 0.75 * emb.flip(0)), pooled_text(emb))


@pytest.mark.parametrize("colour_matrix,channel_bins", [(False, 0), (True, 0), (True, 4)])
def test_tone_curve_colour_matrix_and_channel_curves_act_on_each_full_resolution_guide_pixel(
    colour_matrix: bool, channel_bins: int
) -> None:
    """Head weights zero, the tone rows' biases = a curve's values at the knots (the matrix rows' = a 3×3
    matrix, the channel rows' = a curve per channel): the output is the upsampled base + the curve at each guide
    pixel's luma, linearly interpolated between knots (as np.interp), + the matrix times the pixel's colour +
    each channel's curve at that channel's value."""
    k, c = 5, channel_bins
    cfg = RefinerConfig(channels=8, blocks=1, tone_bins=k, colour_matrix=colour_matrix, channel_bins=c)
    r = DetailRefiner(cfg).eval()
    curve = torch.tensor([[-0.5, -0.1, 0.2, 0.3, 0.6], [0.0, 0.1, 0.0, -0.2, -0.4], [0.3, 0.3, 0.2, 0.1, 0.0]])
    matrix = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.5, -0.3], [-0.1, 0.2, 0.4]]) * colour_matrix
    steps = torch.tensor([[-0.4, -0.4, 0.3, 0.3], [0.2, -0.2, 0.2, -0.2], [0.0, 0.1, 0.5, 0.1]])[:, :c]
    rows = 3 * 4 + r.cfg.textures
    with torch.no_grad():
        r.head.bias[rows : rows + 3 * k] = curve.flatten()
        r.head.bias[rows + 3 * k : rows + 3 * k + 9 * colour_matrix] = matrix.flatten()[: 9 * colour_matrix]
        r.head.bias[rows + 3 * k + 9 * colour_matrix :] = steps.flatten()
        base = torch.rand(1, 3, 4, 6) * 0.4 - 0.2
        guide = torch.rand(1, 3, 8, 12) * 2 - 1
        out = r(base, guide)
    y = ((0.299 * guide[0, 0] + 0.587 * guide[0, 1] + 0.114 * guide[0, 2] + 1) / 2).numpy()
    knots = np.linspace(0, 1, k)
    tone = np.stack([np.interp(y, knots, curve[c].numpy()) for c in range(3)])
    mixed = torch.einsum("ij,jhw->ihw", matrix, guide[0]).numpy()
    unit = ((guide[0] + 1) / 2).numpy()
    channel = np.stack([np.interp(unit[i], np.linspace(0, 1, c), steps[i].numpy()) for i in range(3)]) if c else 0
    up = F.interpolate(base, scale_factor=2, mode="bilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(out[0].numpy(), np.clip(up + tone + mixed + channel, -1, 1), atol=1e-5)


def test_screen_textures_and_frame_position_lie_on_the_picture_box() -> None:
    """With the camera's picture in a box of a larger frame (`aspect`'s margins), the waves and the frame
    position on the box are those of a frame of the box's size: origin, scale and radius follow the picture;
    a box of the whole frame is no box."""
    r = live(RefinerConfig(channels=8, blocks=1, periods=(4.0, 6.0), position=True))
    like = torch.zeros(1)
    box = (3.0, 5.0, 64.0, 85.0)
    with torch.no_grad():
        framed, alone = r.textures((70, 96), like, box), r.textures((64, 85), like)
        torch.testing.assert_close(framed[:, 3:67, 5:90], alone, atol=1e-5, rtol=0)
        assert r.textures((70, 96), like, box) is framed and r.textures((70, 96), like) is not framed
    torch.testing.assert_close(frame_position((70, 96), box=box)[:, 3:67, 5:90], frame_position((64, 85)))
    base, guide = torch.rand(1, 3, 8, 12) * 2 - 1, torch.rand(1, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(r(base, guide, box=(0.0, 0.0, 16.0, 24.0)), r(base, guide))
        assert not torch.allclose(r(base, guide, box=(0.0, 2.0, 16.0, 20.0)), r(base, guide))


def test_frame_position_measures_the_radius_as_the_looks_vignettes_do() -> None:
    pos = frame_position((6, 10))
    torch.testing.assert_close(pos[2], _radius(torch.zeros(1, 3, 6, 10)))
    torch.testing.assert_close(pos[3], pos[2] ** 2)
    torch.testing.assert_close(pos[0], -pos[0].flip(1))  # u runs from edge to edge through the centre
    torch.testing.assert_close(pos[1], -pos[1].flip(0))


def test_frame_position_adds_a_map_of_the_radius_built_once_per_size() -> None:
    """Every weight zero but the radius's share of the stem and the head's colour rows: a flat frame comes out
    as the flat value plus that radius map on each base pixel's 2×2 block, exactly; the evaluation-mode map is
    cached per size and equals the one made afresh while training."""
    r = DetailRefiner(RefinerConfig(channels=4, blocks=1, position=True)).eval()
    with torch.no_grad():
        for p in r.parameters():
            p.zero_()
        r.place.weight[:, 2] = 1.0  # relu(radius) on every feature
        r.head.weight[:12] = 0.1  # each sub-pixel's colour: 0.1 · Σ features = 0.4 · radius
    base, guide = torch.full((1, 3, 8, 12), 0.2), torch.full((1, 3, 16, 24), 0.2)
    with torch.no_grad():
        out = r(base, guide)
        again = r(base, guide)
    want = 0.2 + 0.4 * frame_position((8, 12)).repeat_interleave(2, 1).repeat_interleave(2, 2)[2]
    torch.testing.assert_close(out[0], want.expand(3, -1, -1))
    assert len(r._placed) == 1
    torch.testing.assert_close(again, out)
    torch.testing.assert_close(r(base, guide).detach(), out)  # grad enabled: made afresh, nothing cached
    assert not r._placed


def test_widening_a_trained_refiner_keeps_what_it_computes_until_trained() -> None:
    r = live(RefinerConfig(channels=8, blocks=2), seed=3)
    base, guide = torch.rand(2, 3, 8, 12) * 2 - 1, torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        want = r(base, guide)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_refiner(r, Path(d) / REFINER_FILE)
        cfg = RefinerConfig(text_dim=6, tone_bins=4, position=True, colour_matrix=True, channel_bins=3)
        wide = initial_refiner(cfg, Path(d) / REFINER_FILE).eval()
    assert wide.cfg == replace(cfg, channels=8, blocks=2)
    with tempfile.TemporaryDirectory() as d:  # the curve's head rows would land on the matrix's
        save_refiner(live(RefinerConfig(channels=8, blocks=1, colour_matrix=True)), Path(d) / REFINER_FILE)
        with pytest.raises(ValueError, match="tone_bins cannot be added before"):
            initial_refiner(RefinerConfig(tone_bins=4), Path(d) / REFINER_FILE)
        # channel curves come after the matrix: adding them to a matrix refiner keeps its rows where they were
        initial_refiner(RefinerConfig(colour_matrix=True, channel_bins=3), Path(d) / REFINER_FILE)
        save_refiner(live(RefinerConfig(channels=8, blocks=1, tone_bins=4)), Path(d) / REFINER_FILE)
        with pytest.raises(ValueError, match="tone_bins differ"):
            initial_refiner(RefinerConfig(tone_bins=8), Path(d) / REFINER_FILE)
    with torch.no_grad():
        torch.testing.assert_close(wide(base, guide, torch.randn(6)), want, atol=1e-6, rtol=0)


def tiny_pipe(refiner: DetailRefiner | None, size: int = 64) -> StylePipeline:
    base = load_pipeline(ModelSettings(name="tiny-random", height=size, width=size))
    return StylePipeline(base.dit, base.autoencoder, base.text, base.settings, name="t", refiner=refiner)


def test_pipeline_encodes_half_resolution_and_guides_the_refiner_with_the_camera_frame() -> None:
    r = live()
    pipe = tiny_pipe(r)
    assert pipe.pixel_factor == 16
    seen: dict[str, torch.Tensor] = {}
    encode = pipe.autoencoder.encode_raw
    forward = r.forward

    def spy_encode(frames: torch.Tensor, cache):  # type: ignore[no-untyped-def]
        seen["encoded"] = frames
        return encode(frames, cache)

    def spy_refine(
        base: torch.Tensor, guide: torch.Tensor | None, text: torch.Tensor | None = None, box: tuple | None = None
    ) -> torch.Tensor:
        seen["base"], seen["guide"], seen["box"] = base, guide, box  # type: ignore[assignment]
        return forward(base, guide, text, box)

    pipe.autoencoder.encode_raw = spy_encode  # type: ignore[method-assign]
    r.forward = spy_refine  # type: ignore[method-assign]
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)  # 4:3 camera, 64 px short side
    state = pipe.new_stream_state(StreamParams())
    out = pipe.process_chunk(state, frames)
    assert out.shape == frames.shape
    assert state.model_size == (64, 96)  # aspect at a multiple of 16 · 2 (patch) → 4:3 of 64 is 85 → 96
    assert seen["encoded"].shape[-2:] == (32, 48) and seen["base"].shape[-2:] == (32, 48)
    guide = seen["guide"]
    assert guide is not None and guide.shape == (1, 3, 64, 96)
    # the camera's picture is 64×85 of the 64×96 model frame (its own aspect), the columns beside it its edge's
    assert seen["box"] == (0, 5, 64, 85)
    torch.testing.assert_close(guide[..., :5], guide[..., 5:6].expand(-1, -1, -1, 5))
    torch.testing.assert_close(guide[..., 90:], guide[..., 89:90].expand(-1, -1, -1, 6))
    # the guide is the camera frame at the model resolution; the autoencoder saw its 2×2 means
    torch.testing.assert_close(seen["encoded"][0, :, 0], F.avg_pool2d(guide, 2)[0])
    assert state.kv.tokens_per_frame == (32 // 8 // 2) * (48 // 8 // 2)
    # text-to-video: no camera frame, the refiner runs without a guide
    gen_state = pipe.new_stream_state(StreamParams())
    video = pipe.generate_chunk(gen_state, (48, 64))
    assert video.shape == (1, 48, 64, 3) and seen["guide"] is None


def test_pipeline_gives_a_conditioned_refiner_the_streams_pooled_prompt() -> None:
    text_dim = tiny_pipe(None).dit.cfg.text_dim
    r = live(RefinerConfig(channels=8, blocks=1, text_dim=text_dim, tone_bins=4))
    pipe = tiny_pipe(r)
    seen: list[torch.Tensor] = []
    forward = r.forward

    def spy(
        base: torch.Tensor, guide: torch.Tensor | None, text: torch.Tensor | None = None, box: tuple | None = None
    ) -> torch.Tensor:
        assert text is not None
        seen.append(text)
        return forward(base, guide, text, box)

    r.forward = spy  # type: ignore[method-assign]
    frames = np.random.default_rng(1).integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    outs = []
    for prompt in ("thermal camera", "a comic book page"):
        state = pipe.new_stream_state(StreamParams(prompts=((prompt, 1.0),)))
        outs.append(pipe.process_chunk(state, frames))
        torch.testing.assert_close(seen[-1], pooled_text(pipe.embed(((prompt, 1.0),))))
    assert np.abs(outs[0].astype(int) - outs[1].astype(int)).mean() > 0.5
    video = pipe.generate_chunk(pipe.new_stream_state(StreamParams()), (48, 64))  # text-to-video: no guide
    assert video.shape == (1, 48, 64, 3)


def test_a_weights_folder_carries_its_refiner_and_resolution(tmp_path: Path) -> None:
    folder = Path(MODEL_ALIASES["default"])
    if (folder / REFINER_FILE).exists():  # the shipped model already has one: strip it to get a plain folder
        plain = tmp_path / "plain"
        shutil.copytree(folder, plain)
        meta = json.loads((plain / "model.json").read_text())
        meta.pop("refiner"), meta.pop("settings")
        (plain / "model.json").write_text(json.dumps(meta))
        (plain / REFINER_FILE).unlink()
        folder = plain
    save_refiner(live(RefinerConfig(channels=8, blocks=1)), tmp_path / "r.safetensors")
    export_with_refiner(folder, tmp_path / "r.safetensors", tmp_path / "refined")
    resolved = resolve(ModelSettings(name=str(tmp_path / "refined")))
    assert (resolved.settings.height, resolved.settings.width) == (256, 256)
    assert any("model.json sets height=256" in n for n in resolved.notes)
    pipe = load_pipeline(ModelSettings(name=str(tmp_path / "refined")))
    assert pipe.refiner is not None and pipe.geometry((480, 640)).model == (256, 352)
    # a size the user gives wins over the folder's
    assert load_pipeline(ModelSettings(name=str(tmp_path / "refined"), height=128, width=128)).settings.height == 128
    meta = json.loads((tmp_path / "refined" / "model.json").read_text())
    (tmp_path / "refined" / "model.json").write_text(json.dumps({**meta, "settings": {"heigth": 256}}))
    with pytest.raises(CheckpointError, match="unknown settings"):
        resolve(ModelSettings(name=str(tmp_path / "refined")))


def test_training_data_comes_from_the_model_and_training_resumes_exactly(tmp_path: Path) -> None:
    pipe = tiny_pipe(None, size=32)
    sizes = ((64, 96),)
    build_refiner_data(pipe, tmp_path / "data", num_clips=2, looks=("thermal", "comic"), frames=5, keep=(1, 4),
                       shard_clips=1, sizes=sizes, real_imagery=False, progress=None)  # fmt: skip
    shards = load_shards(tmp_path / "data")
    assert len(shards) == 2
    s = shards[0]
    assert s["guide"].shape == (2, 64, 96, 3) and s["target"].shape == (4, 64, 96, 3)
    assert s["base"].shape == (4, 32, 48, 3) and s["guide_of"].tolist() == [0, 1, 0, 1]
    # every sample's caption is recorded (a caption of its look), embedded for a prompt-conditioned refiner
    embedded = load_shards(tmp_path / "data", embed=lambda c: pooled_text(pipe.embed(((c, 1.0),))))[0]["text"]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "data" / "shard_0000.safetensors"), "pt") as f:
        captions = json.loads(f.metadata()["captions"])
    looks = ["thermal"] * 2 + ["comic"] * 2
    assert len(captions) == 4 and all(c in LOOKS[look].captions for c, look in zip(captions, looks, strict=True))
    torch.testing.assert_close(embedded[3], pooled_text(pipe.embed(((captions[3], 1.0),))))
    conditioned = train_refiner(tmp_path / "data", tmp_path / "text", steps=2, batch=2, progress=None,
                                cfg=RefinerConfig(channels=8, blocks=1, text_dim=pipe.dit.cfg.text_dim),
                                embed=lambda c: pooled_text(pipe.embed(((c, 1.0),))))  # fmt: skip
    assert conditioned.film is not None and conditioned.film.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="needs `embed`"):
        train_refiner(tmp_path / "data", tmp_path / "x", steps=1, cfg=conditioned.cfg, progress=None)
    with pytest.raises(ValueError, match="without a refiner"):
        build_refiner_data(tiny_pipe(live(), size=32), tmp_path / "x", 1, progress=None)
    with pytest.raises(ValueError, match=r"other settings \(seed\)"):  # resuming never mixes two sets' samples
        build_refiner_data(pipe, tmp_path / "data", num_clips=2, seed=8, looks=("thermal", "comic"), frames=5,
                           keep=(1, 4), shard_clips=1, sizes=sizes, real_imagery=False, progress=None)  # fmt: skip
    kw = dict(batch=2, lr=1e-3, checkpoint_every=2, cfg=SMALL, progress=None)
    whole = train_refiner(tmp_path / "data", tmp_path / "whole", steps=4, **kw)  # type: ignore[arg-type]
    train_refiner(tmp_path / "data", tmp_path / "resumed", steps=2, **kw)  # type: ignore[arg-type]
    resumed = train_refiner(tmp_path / "data", tmp_path / "resumed", steps=4, **kw)  # type: ignore[arg-type]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert (tmp_path / "whole" / "losses.csv").read_text().startswith("step,loss")


@pytest.mark.parametrize("smoothing", [0.0, 0.6])
def test_refiner_base_is_the_running_blend_of_the_decoded_frames(smoothing: float) -> None:
    """b_t = a·b_{t−1} + (1 − a)·d_t over a stream's decoded frames d (a = `refiner_smoothing`), the first as
    it is; `reset()` starts the blend again."""
    r = live()
    base = load_pipeline(ModelSettings(name="tiny-random", height=64, width=64, refiner_smoothing=smoothing))
    pipe = StylePipeline(base.dit, base.autoencoder, base.text, base.settings, refiner=r)
    decoded: list[torch.Tensor] = []
    bases: list[torch.Tensor] = []
    forward = r.forward

    def spy(
        b: torch.Tensor, guide: torch.Tensor | None, text: torch.Tensor | None = None, box: tuple | None = None
    ) -> torch.Tensor:
        bases.extend(b)
        return forward(b, guide, text, box)

    r.forward = spy  # type: ignore[method-assign]
    state = pipe.new_stream_state(StreamParams())
    decode = state.decoder.decode
    state.decoder.decode = lambda z: _record(decode, z, decoded)  # type: ignore[method-assign]
    frames = np.random.default_rng(1).integers(0, 256, (9, 48, 64, 3), dtype=np.uint8)
    pipe.process_chunk(state, frames[:1])
    pipe.process_chunk(state, frames[1:5])
    expected = [decoded[0].float()]
    for d in decoded[1:]:
        expected.append(smoothing * expected[-1] + (1 - smoothing) * d.float())
    assert len(bases) == len(decoded) == 5
    for got, want in zip(bases, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    state.reset()
    assert state.refiner_base is None


def _record(decode, z: torch.Tensor, into: list[torch.Tensor]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    out = decode(z)
    into.extend(out[0].transpose(0, 1))
    return out


def test_structure_loss_is_one_minus_the_evaluations_ssim_and_trains() -> None:
    """ssim_map's grouped separable pass equals SSIM with the 2-D Gaussian window written out (Wang et al.);
    structure_loss is 0 for the target itself and its gradient moves an output towards the target."""
    torch.manual_seed(0)
    a, b = torch.rand(2, 1, 20, 24), torch.rand(2, 1, 20, 24)
    g = torch.exp(-((torch.arange(11.0) - 5) ** 2) / (2 * 1.5**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2).view(1, 1, 11, 11)
    mu_a, mu_b = F.conv2d(a, window), F.conv2d(b, window)
    var_a, var_b = F.conv2d(a * a, window) - mu_a**2, F.conv2d(b * b, window) - mu_b**2
    cov = F.conv2d(a * b, window) - mu_a * mu_b
    want = ((2 * mu_a * mu_b + 1e-4) * (2 * cov + 9e-4)) / ((mu_a**2 + mu_b**2 + 1e-4) * (var_a + var_b + 9e-4))
    torch.testing.assert_close(ssim_map(a, b), want, atol=1e-5, rtol=0)
    target = torch.rand(2, 3, 20, 24) * 2 - 1
    assert structure_loss(target, target).abs() < 1e-6
    output = (target + 0.3 * torch.randn_like(target)).requires_grad_()
    loss = structure_loss(output, target)
    loss.backward()
    with torch.no_grad():
        assert structure_loss(output - 0.05 * output.grad / output.grad.abs().max(), target) < loss
