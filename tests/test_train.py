"""The training recipe on a smaller-than-tiny DiT on CPU: every stage's loss falls on a fixed batch, DMD
updates touch only what they should, runs resume bitwise, and the eval metrics are what they claim."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vidfx.generation import denoise_chunk
from vidfx.model.wan_dit import CausalDiT
from vidfx.sampling import chunk_sigmas, sample_euler, step_sigmas, teacher_sigmas
from vidfx.train.checkpoint import flatten_state, latest_checkpoint, read_weights, unflatten_state
from vidfx.train.config import (
    DMDConfig,
    EMAConfig,
    ModelSpec,
    OdePairsConfig,
    OptimConfig,
    PairedDMDConfig,
    PairedV2VConfig,
    RunConfig,
    StudentInitConfig,
    TeacherConfig,
    dump_toml,
    load_config,
    to_dict,
)
from vidfx.train.data import DataOrder, LatentDataset, write_latent_cache
from vidfx.train.dmd import DMDStage, dmd_direction, dmd_loss, rollout
from vidfx.train.flow import drop_text, sample_sigma
from vidfx.train.ode_pairs import OdePairs, generate_ode_pairs, merged_grid, teacher_trajectory
from vidfx.train.paired_v2v import PairedV2VStage, grow_state, paired_inputs, scene_pairs, source_conditioned
from vidfx.train.student_init import StudentInitStage, chunk_mse, regression_inputs
from vidfx.train.teacher import TeacherStage

torch.set_num_threads(1)

SPEC = ModelSpec(
    "tiny",
    {
        "dim": 32,
        "ffn_dim": 64,
        "num_heads": 2,
        "num_layers": 2,
        "freq_dim": 32,
        "text_dim": 16,
        "text_len": 8,
        "in_dim": 4,
        "out_dim": 4,
    },
)
LATENT = (4, 4, 8, 8)  # (C, F, H, W): 4 latent frames of 4×4 tokens
TEXT = (4, 16)  # (tokens, text_dim)
STEPS = [1000, 750, 500]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(tmp: Path, name: str, steps: int = 4, **kw) -> RunConfig:
    return RunConfig(
        out=str(tmp / name),
        steps=steps,
        batch_size=kw.pop("batch_size", 2),
        save_every=kw.pop("save_every", 1000),
        progress=False,
        **kw,
    )


def pairs_config(workdir: Path, out: Path, num_pairs: int, shard_size: int = 4, batch_size: int = 3) -> OdePairsConfig:
    """ODE pairs of the workdir's teacher on its latent cache (8 Euler steps, CFG 2)."""
    return OdePairsConfig(
        teacher=str(workdir / "teacher.safetensors"),
        latents=str(workdir / "latents"),
        out=str(out),
        num_pairs=num_pairs,
        sample_steps=8,
        student_steps=STEPS,
        guidance=2.0,
        shard_size=shard_size,
        batch_size=batch_size,
        model=SPEC,
        progress=False,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A latent cache (6 clips, 2 captions each), a random 'teacher' with a live head, and its ODE pairs."""
    d = tmp_path_factory.mktemp("train")
    g = gen(0)
    base = torch.randn(6, 4, 1, 8, 8, generator=g)
    latents = base + 0.3 * torch.randn(6, *LATENT, generator=g)  # temporally correlated clips
    texts = [torch.randn(2, *TEXT, generator=g) for _ in range(6)]
    write_latent_cache(d / "latents", latents, texts, shard_size=4)
    teacher = random_dit(1)
    save_file(teacher.state_dict(), str(d / "teacher.safetensors"))
    save_file(random_dit(2).state_dict(), str(d / "other.safetensors"))
    cfg = pairs_config(d, d / "pairs", num_pairs=6)
    generate_ode_pairs(cfg)
    return d


def random_dit(seed: int) -> CausalDiT:
    """A tiny DiT whose output head is not zero (a freshly initialised Wan head predicts v = 0)."""
    torch.manual_seed(seed)
    m = CausalDiT(SPEC.build())
    torch.nn.init.normal_(m.head.head.weight, std=0.05)
    return m


def params(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.named_parameters()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# -- config and checkpoint plumbing ------------------------------------------------------------------------


def test_config_round_trips_through_toml_and_rejects_typos(tmp_path: Path) -> None:
    cfg = DMDConfig(data="x", score_chunk_frames=None, run=RunConfig(out="o", steps=7), model=SPEC)
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(to_dict(cfg)))
    back = load_config(DMDConfig, path)
    assert back == cfg
    tweaked = load_config(DMDConfig, path, ["optim.lr=3e-4", "ratio=2", "model.overrides.num_layers=1"])
    assert tweaked.optim.lr == 3e-4 and tweaked.ratio == 2 and tweaked.model.build().num_layers == 1
    assert tweaked.critic_optim.lr == 2e-6  # untouched sections keep CausVid's default
    with pytest.raises(ValueError, match="unknown key"):
        load_config(DMDConfig, path, ["optim.learning_rate=1"])


def test_optimizer_state_flattens_to_tensors_and_back_bitwise() -> None:
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, betas=(0.5, 0.9))
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten_state(state, "opt", tensors)
    import msgpack

    tree = msgpack.unpackb(msgpack.packb(tree), strict_map_key=False)  # what the checkpoint stores
    back = unflatten_state(tree, tensors)
    assert back["param_groups"][0]["betas"] == (0.5, 0.9)
    for k, v in state["state"].items():
        for name, t in v.items():
            assert torch.equal(back["state"][k][name], t)


# -- teacher -----------------------------------------------------------------------------------------------


def test_sigma_sampling_and_text_dropout() -> None:
    s = sample_sigma((20000,), gen(0), torch.device("cpu"), "shifted", shift=8.0)
    assert abs(float(s.median()) - 8 * 0.5 / (1 + 7 * 0.5)) < 0.01  # median of shift(U) = shift(0.5)
    s = sample_sigma((20000,), gen(0), torch.device("cpu"), "logit_normal")
    assert abs(float(s.median()) - 0.5) < 0.01
    text = torch.ones(1000, *TEXT)
    kept = drop_text(text, 0.1, gen(1))[:, 0, 0]
    assert set(kept.tolist()) <= {0.0, 1.0} and abs(float(1 - kept.mean()) - 0.1) < 0.03


def fixed_batch_losses(
    stage: TeacherStage | StudentInitStage, role: str, seed: int, steps: int = 25
) -> tuple[float, float]:
    """The stage's loss on its first batch before and after `steps` optimiser steps on that same batch."""
    batch = stage.batch(0)
    with torch.no_grad():
        before = stage.loss(batch, gen(seed)).item()
    for _ in range(steps):
        stage.optimize(role, stage.loss(batch, gen(seed)), stage.cfg.optim)
    with torch.no_grad():
        after = stage.loss(batch, gen(seed)).item()
    return before, after


@pytest.mark.parametrize("chunk_frames", [None, 2])
def test_teacher_loss_falls_on_a_fixed_batch(workdir: Path, tmp_path: Path, chunk_frames: int | None) -> None:
    cfg = TeacherConfig(
        latents=str(workdir / "latents"),
        chunk_frames=chunk_frames,
        text_dropout=0.0,
        run=run(tmp_path, "t"),
        model=SPEC,
        optim=OptimConfig(lr=3e-3),
    )
    before, after = fixed_batch_losses(TeacherStage(cfg), "teacher", seed=5)
    assert after < 0.6 * before, (before, after)


# -- ODE pairs ---------------------------------------------------------------------------------------------


def test_ode_pairs_hold_the_teacher_trajectory_at_the_student_steps(workdir: Path) -> None:
    pairs = OdePairs(workdir / "pairs")
    sigmas = step_sigmas(STEPS)
    assert torch.allclose(pairs.sigmas, torch.tensor(sigmas))
    grid = merged_grid(8, 8.0, sigmas)
    assert all(any(abs(s - g) < 1e-12 for g in grid) for s in sigmas) and grid[0] == 1.0 and grid[-1] == 0.0
    states, text = pairs.batch([4])
    teacher = CausalDiT(SPEC.build())
    teacher.load_state_dict(read_weights(workdir / "teacher.safetensors"))
    x1 = states[:, 0]  # σ = 1: the starting noise itself
    again = teacher_trajectory(teacher, x1, text, grid, sigmas, guidance=2.0)
    assert torch.allclose(again, states, atol=1e-5)
    # The kept middle state is where Euler from the noise stops at that σ.
    part, _ = sample_euler(lambda x, s: _cfg_v(teacher, x, s, text, 2.0), x1, [g for g in grid if g >= sigmas[1]])
    assert torch.allclose(part, states[:, 1], atol=1e-5)
    assert not torch.allclose(states[:, -1], states[:, 0])


def _cfg_v(model: CausalDiT, x: torch.Tensor, s: float, text: torch.Tensor, scale: float) -> torch.Tensor:
    t = torch.full((x.shape[0],), 1000.0 * s)
    c, u = model(x, t, text), model(x, t, torch.zeros_like(text))
    return u + scale * (c - u)


def test_ode_pair_generation_resumes_where_it_stopped(workdir: Path, tmp_path: Path) -> None:
    cfg = pairs_config(workdir, tmp_path / "p", num_pairs=4)
    assert generate_ode_pairs(cfg) == 4  # "killed" after the first shard ...
    cfg.num_pairs = 6
    assert generate_ode_pairs(cfg) == 6  # ... and continued
    whole, part = OdePairs(workdir / "pairs"), OdePairs(tmp_path / "p")
    for i in range(6):
        assert torch.equal(whole.batch([i])[0], part.batch([i])[0])
        assert torch.equal(whole.batch([i])[1], part.batch([i])[1])


# -- student initialisation --------------------------------------------------------------------------------


def test_regression_inputs_pick_one_state_per_chunk() -> None:
    states = torch.arange(4.0).view(1, 4, 1, 1, 1, 1).expand(3, 4, 2, 6, 2, 2).clone()  # value = state index
    sigmas = torch.tensor([1.0, 0.8, 0.5])
    x, sigma = regression_inputs(states, sigmas, chunk_frames=2, gen=gen(3))
    idx = x[:, 0, :, 0, 0].long()  # (B, F)
    assert torch.equal(idx[:, 0::2], idx[:, 1::2])  # constant within a chunk
    assert len(set(idx[:, ::2].flatten().tolist())) > 1  # independent across chunks/samples
    assert torch.equal(sigma, torch.cat([sigmas, torch.zeros(1)])[idx])


def test_student_init_loss_falls_on_a_fixed_batch(workdir: Path, tmp_path: Path) -> None:
    cfg = StudentInitConfig(
        pairs=str(workdir / "pairs"),
        init=str(workdir / "teacher.safetensors"),
        chunk_frames=2,
        run=run(tmp_path, "s"),
        model=SPEC,
        optim=OptimConfig(lr=3e-3),
    )
    before, after = fixed_batch_losses(StudentInitStage(cfg), "generator", seed=7)
    assert after < 0.5 * before, (before, after)


# -- paired video-to-video ---------------------------------------------------------------------------------


def paired_cache(folder: Path, sources: torch.Tensor, targets: dict[str, torch.Tensor], texts: dict) -> Path:
    """A latent cache of scenes (plain source, then each look) and the dataset captions.jsonl that pairs them.
    write_latent_cache names clip i `clip{i}`; a scene's looks name its plain clip as their `source`."""
    latents, caps, looks, lines = [], [], [], []
    for j in range(sources.shape[0]):
        source = f"clip{len(latents)}"
        for look, x in [(None, sources), *targets.items()]:
            lines.append({"file": f"clip{len(latents)}", "captions": ["c"], "look": look, "source": source})
            latents.append(x[j])
            caps.append(texts[look])
            looks.append(look)
    write_latent_cache(folder / "lat", torch.stack(latents), caps, looks=looks, shard_size=5)
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    return folder / "lat"


def test_scene_pairs_join_each_look_to_its_plain_source(tmp_path: Path) -> None:
    z = torch.zeros(3, *LATENT)
    lat = paired_cache(tmp_path, z, {"a": z, "b": z}, {None: torch.zeros(1, *TEXT), "a": torch.zeros(1, *TEXT),
                                                     "b": torch.zeros(1, *TEXT)})  # fmt: skip
    meta = LatentDataset(lat).meta
    pairs = scene_pairs(meta, tmp_path)
    # clips 0, 3, 6 are the sources; each pairs with itself (keep the input) and its two looks.
    assert pairs == [(0, 0), (0, 1), (0, 2), (3, 3), (3, 4), (3, 5), (6, 6), (6, 7), (6, 8)]
    # look_repeats: look b's pairs three times each, the rest once.
    assert scene_pairs(meta, tmp_path, {"b": 3}) == [
        (0, 0), (0, 1), (0, 2), (0, 2), (0, 2), (3, 3), (3, 4), (3, 5), (3, 5), (3, 5),
        (6, 6), (6, 7), (6, 8), (6, 8), (6, 8),
    ]  # fmt: skip
    for bad in ({"c": 2}, {"b": 0}):
        with pytest.raises(ValueError, match="look_repeats"):
            scene_pairs(meta, tmp_path, bad)
    # From TOML: a table of whole numbers, checked entry by entry.
    path = tmp_path / "v2v.toml"
    path.write_text("look_repeats = { b = 3 }\n")
    assert load_config(PairedV2VConfig, path).look_repeats == {"b": 3}
    for text in ('look_repeats = { b = "3" }\n', "look_repeats = [3]\n"):
        path.write_text(text)
        with pytest.raises(ValueError, match="look_repeats"):
            load_config(PairedV2VConfig, path)
    lines = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(e) for e in lines if e["file"] != "clip3"))
    with pytest.raises(ValueError, match="clip3: in the latent cache but not in the dataset"):
        scene_pairs(meta, tmp_path)


def test_paired_inputs_noise_the_source_at_the_first_step_and_the_target_after() -> None:
    b, frames = 64, 4
    source = torch.full((b, 4, frames, 16, 16), 10.0)
    target = torch.full((b, 4, frames, 16, 16), -10.0)
    strengths = torch.full((b,), 0.7)
    levels = torch.tensor(chunk_sigmas(STEPS, 0.7))  # σ(0.7), then σ(500)
    x, sigma = paired_inputs(source, target, strengths, STEPS, 8.0, 2, 0.5, gen(0))
    assert sigma.shape == (b, frames) and torch.equal(sigma[:, 0::2], sigma[:, 1::2])  # one level a chunk
    assert torch.equal(sigma.unique(), torch.tensor([0.0, *levels.flip(0)]))
    mean = x.mean(dim=(1, 3, 4))  # (B, F): (1 − σ)·(±10) + noise averaged over 1024 values
    first = sigma == levels[0]
    assert 0.35 < first.float().mean() < 0.65
    torch.testing.assert_close(mean[first], (1 - sigma[first]) * 10, atol=0.2, rtol=0)  # the source
    torch.testing.assert_close(mean[~first], (1 - sigma[~first]) * -10, atol=0.2, rtol=0)  # the target
    clean = sigma == 0
    assert clean.any() and torch.equal(x.permute(0, 2, 1, 3, 4)[clean], target.permute(0, 2, 1, 3, 4)[clean])
    _, only_source = paired_inputs(source, target, strengths, STEPS, 8.0, 2, 1.0, gen(0))
    assert torch.equal(only_source, torch.full_like(only_source, float(levels[0])))


def test_a_grown_student_computes_what_the_student_did_whatever_the_condition() -> None:
    """More input channels (the source condition), a wider FFN and an extra block: the same function."""
    torch.manual_seed(0)
    student = random_dit(3)
    for block in student.blocks:  # non-zero residual branches, so a wrongly grown FFN would show
        torch.nn.init.normal_(block.ffn[2].weight, std=0.05)
    bigger = source_conditioned(SPEC)
    bigger = ModelSpec(bigger.preset, {**bigger.overrides, "ffn_dim": 96, "num_layers": 3})
    grown = CausalDiT(bigger.build())
    fresh = grown.state_dict()
    grown.load_state_dict(grow_state(student.state_dict(), fresh))
    x, text = torch.randn(2, *LATENT), torch.randn(2, *TEXT)
    t = torch.rand(2, LATENT[1]) * 1000
    with torch.no_grad():
        want = student(x, t, text, chunk_frames=2)
        torch.testing.assert_close(grown(x, t, text, chunk_frames=2, condition=torch.randn_like(x)), want)
    # the new FFN units and the new block keep a fresh init where it gives them gradients
    assert grown.blocks[0].ffn[0].weight[SPEC.build().ffn_dim :].abs().sum() > 0
    assert grown.blocks[2].self_attn.q.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="bigger than"):  # a network never shrinks
        grow_state(CausalDiT(source_conditioned(SPEC).build()).state_dict(), student.state_dict())
    with pytest.raises(ValueError, match="lacks"):
        grow_state(grown.state_dict(), student.state_dict())
    with pytest.raises(ValueError, match="lack"):
        grow_state({k: v for k, v in student.state_dict().items() if k != "head.head.bias"}, fresh)


def test_paired_v2v_teaches_the_student_a_look_it_applies_at_inference(tmp_path: Path) -> None:
    """Caption "lift" raises a scene by 1.5, the plain caption keeps it. After the fine-tune, the streaming V2V
    sampler at strength 0.5 (shift 1: σ = 0.5) follows the caption and keeps each unseen scene's layout
    (2×2-pixel blocks, still over 4 frames: what a patch and the frames can average against the noise)."""
    from vidfx.train.eval import student_v2v

    g = gen(0)
    scenes = torch.randn(12, 4, 1, 4, 4, generator=g).repeat_interleave(2, -1).repeat_interleave(2, -2)
    scenes = scenes.expand(-1, -1, 4, -1, -1).contiguous()
    t_plain, t_lift = torch.randn(1, *TEXT, generator=g), torch.randn(1, *TEXT, generator=g)
    lat = paired_cache(tmp_path, scenes[:8], {"lift": scenes[:8] + 1.5}, {None: t_plain, "lift": t_lift})
    stage = PairedV2VStage(
        PairedV2VConfig(
            latents=str(lat),
            videos=str(tmp_path),
            chunk_frames=2,
            student_steps=STEPS,
            shift=1.0,
            strengths=(0.4, 0.6),
            run=run(tmp_path, "v2v", steps=300, batch_size=8),
            model=SPEC,
            optim=OptimConfig(lr=3e-3),
        )
    )
    before = stage.loss(stage.batch(0), gen(5)).item()
    stage.fit()
    assert stage.loss(stage.batch(0), gen(5)).item() < 0.5 * before
    sample = student_v2v(stage.model.eval(), STEPS, 0.5, chunk_frames=2, shift=1.0)
    unseen = scenes[8:]
    kept = sample(unseen, t_plain.expand(4, -1, -1), gen(1))
    lifted = sample(unseen, t_lift.expand(4, -1, -1), gen(1))

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

    assert corr(kept, unseen) > 0.6 and corr(lifted, unseen) > 0.6, (corr(kept, unseen), corr(lifted, unseen))
    assert abs(float(kept.mean() - unseen.mean())) < 0.5 and float(lifted.mean() - unseen.mean()) > 1.0


def paired_dmd_stage(workdir: Path, tmp_path: Path, weight: float, name: str) -> PairedV2VStage:
    """Paired V2V with DMD on a cache of random scenes and a "lift" look; real score: the workdir's teacher."""
    g = gen(0)
    scenes = torch.randn(4, *LATENT, generator=g)
    texts = {None: torch.randn(1, *TEXT, generator=g), "lift": torch.randn(1, *TEXT, generator=g)}
    lat = paired_cache(tmp_path / name, scenes, {"lift": scenes + 1.5}, texts)
    return PairedV2VStage(
        PairedV2VConfig(
            latents=str(lat),
            videos=str(tmp_path / name),
            init=str(workdir / "teacher.safetensors"),
            chunk_frames=2,
            student_steps=STEPS,
            strengths=(0.5, 0.9),
            dmd=PairedDMDConfig(
                real_score=str(workdir / "teacher.safetensors"),
                fake_score_init=str(workdir / "other.safetensors"),
                weight=weight,
                guidance=2.0,
                ratio=2,
                critic_optim=OptimConfig(lr=1e-3),
            ),
            run=run(tmp_path, name, steps=4, batch_size=4, save_every=2),
            model=SPEC,
            optim=OptimConfig(lr=1e-4),
        )
    )


def test_paired_dmd_steps_change_only_their_own_network_and_resume(workdir: Path, tmp_path: Path) -> None:
    stage = paired_dmd_stage(workdir, tmp_path, 1.0, "pd")
    assert stage.real is not None and stage.fake is not None
    nets = {"generator": stage.model, "fake": stage.fake, "real": stage.real}
    batch = stage.batch(0)
    for step, moves in ((stage.generator_step, "generator"), (stage.critic_step, "fake")):
        before = {k: params(m) for k, m in nets.items()}
        logs = step(batch, gen(1))
        assert all(math.isfinite(v) for v in logs.values()), logs
        after = {k: params(m) for k, m in nets.items()}
        assert [k for k in nets if not same(before[k], after[k])] == [moves]
    # The stage's schedule: generator on even steps (ratio 2), critic on every step; the fake score resumes.
    logs = stage.fit()
    assert ["dmd_loss" in entry for entry in logs] == [True, False, True, False]
    again = paired_dmd_stage(workdir, tmp_path, 1.0, "pd")
    assert again.resume() and same(params(again.fake), params(stage.fake))
    assert same(params(again.real), read_weights(workdir / "teacher.safetensors"))


def test_paired_dmd_generator_step_follows_the_dmd_direction_on_top_of_the_regression(
    workdir: Path, tmp_path: Path
) -> None:
    """From the same weights and draws, the step with a large DMD weight moves x₀ along −g (the DMD loss's
    descent), the regression-only step (weight 0) does not, and lowers the regression loss instead."""
    batch = paired_dmd_stage(workdir, tmp_path, 0.0, "a").batch(0)

    def x0_of(stage: PairedV2VStage) -> torch.Tensor:
        x, sigma, _ = stage.inputs(batch, gen(3))
        with torch.no_grad():
            return stage.predict(x, sigma, batch[2], 2)

    along = {}
    for weight in (0.0, 100.0):
        stage = paired_dmd_stage(workdir, tmp_path, weight, f"w{weight:g}")
        g = gen(3)
        x, sigma, _ = stage.inputs(batch, g)
        x0 = x0_of(stage)
        direction = stage.dmd_direction(x0, batch[2], g).flatten()  # what generator_loss(batch, gen(3)) uses
        stage.generator_step(batch, gen(3))
        x1 = x0_of(stage)
        moved = (x1 - x0).flatten()
        along[weight] = float(torch.dot(moved, -direction) / (moved.norm() * direction.norm()))
        if weight == 0:
            assert float(chunk_mse(x1, batch[1], sigma)) < float(chunk_mse(x0, batch[1], sigma))
    assert along[100.0] > 0.2 and along[100.0] > along[0.0] + 0.2, along


# -- DMD ---------------------------------------------------------------------------------------------------


def test_dmd_direction_is_normalised_and_reaches_x_as_the_gradient() -> None:
    g = gen(0)
    x = torch.randn(2, 3, 4, 5, 5, generator=g, requires_grad=True)
    fake, real = torch.randn(2, 3, 4, 5, 5, generator=g), torch.randn(2, 3, 4, 5, 5, generator=g)
    d = dmd_direction(x.detach(), fake, real)
    norm = (x.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    assert torch.allclose(d, (fake - real) / norm)
    dmd_loss(x, d).backward()
    assert torch.allclose(x.grad, d / x.numel(), atol=1e-7)
    assert torch.equal(dmd_direction(real, fake, real), torch.zeros_like(real))  # 0/0 → 0, not NaN


def dmd_stage(workdir: Path, tmp_path: Path, mode: str, **kw) -> DMDStage:
    cfg = DMDConfig(
        generator_init=str(workdir / "teacher.safetensors"),
        real_score=str(workdir / "teacher.safetensors"),
        fake_score_init=str(workdir / "other.safetensors"),
        data=str(workdir / "pairs"),
        chunk_frames=2,
        student_steps=STEPS,
        generator_input=mode,
        run=run(tmp_path, "dmd", **kw.pop("run", {})),
        model=SPEC,
        optim=OptimConfig(lr=1e-3),
        critic_optim=OptimConfig(lr=1e-3),
        ema=EMAConfig(decay=0.9, start_step=1),
        **kw,
    )
    return DMDStage(cfg)


@pytest.mark.parametrize("mode", ["noised_data", "rollout"])
def test_dmd_steps_change_only_their_own_network(workdir: Path, tmp_path: Path, mode: str) -> None:
    stage = dmd_stage(workdir, tmp_path, mode)
    batch, shared = stage.batch(0), gen(9)
    nets = {"generator": stage.generator, "fake": stage.fake, "real": stage.real}
    real0 = params(stage.real)

    # Generator: gradients reach the generator only; its step moves the generator only.
    loss, _ = stage.generator_loss(batch, gen(1), gen(9))
    loss.backward()
    assert all(p.grad is None for p in stage.fake.parameters())
    assert all(p.grad is None for p in stage.real.parameters())
    assert sum(float(p.grad.abs().sum()) for p in stage.generator.parameters() if p.grad is not None) > 0
    stage.generator.zero_grad(set_to_none=True)
    before = {k: params(m) for k, m in nets.items()}
    stage.generator_step(batch, gen(1), shared)
    after = {k: params(m) for k, m in nets.items()}
    assert not same(before["generator"], after["generator"])
    assert same(before["fake"], after["fake"]) and same(before["real"], after["real"])

    # Critic: gradients reach the fake score only; its step moves the fake score only.
    loss, _ = stage.critic_loss(batch, gen(2), gen(9))
    loss.backward()
    assert all(p.grad is None for p in stage.generator.parameters())
    assert all(p.grad is None for p in stage.real.parameters())
    assert sum(float(p.grad.abs().sum()) for p in stage.fake.parameters() if p.grad is not None) > 0
    stage.fake.zero_grad(set_to_none=True)
    before = {k: params(m) for k, m in nets.items()}
    stage.critic_step(batch, gen(2), shared)
    after = {k: params(m) for k, m in nets.items()}
    assert not same(before["fake"], after["fake"])
    assert same(before["generator"], after["generator"]) and same(before["real"], after["real"])

    # The teacher never changes, over whole training steps either.
    stage.fit(3)
    assert same(real0, params(stage.real))
    assert same(real0, read_weights(workdir / "teacher.safetensors"))


def test_dmd_generator_moves_along_the_dmd_direction_and_critic_loss_falls(workdir: Path, tmp_path: Path) -> None:
    stage = dmd_stage(workdir, tmp_path, "noised_data")
    for _, opt in stage.optimizers.values():
        for group in opt.param_groups:
            group["lr"] = 1e-4  # a small step: first-order behaviour
    batch = stage.batch(0)
    with torch.no_grad():
        x0 = stage.sample(batch, gen(3), gen(9), grad=False)
    loss, _ = stage.generator_loss(batch, gen(3), gen(9))  # same draws → same x, σ, ε
    direction = _direction(stage, batch)  # the direction that loss carries
    stage.optimize("generator", loss, stage.cfg.optim)
    with torch.no_grad():
        x1 = stage.sample(batch, gen(3), gen(9), grad=False)
    moved = (x1 - x0).flatten()
    cos = torch.dot(moved, -direction.flatten()) / (moved.norm() * direction.norm())
    assert cos > 0.2, float(cos)
    target = x0 - direction  # the stop-gradient target of the DMD loss
    assert (x1 - target).pow(2).mean() < (x0 - target).pow(2).mean()

    # Critic on a fixed batch of generator samples: its denoising loss falls.
    for _, opt in stage.optimizers.values():
        for group in opt.param_groups:
            group["lr"] = 3e-3
    with torch.no_grad():
        first = stage.critic_loss(batch, gen(4), gen(9))[0].item()
    for _ in range(20):
        stage.critic_step(batch, gen(4), gen(9))
    with torch.no_grad():
        last = stage.critic_loss(batch, gen(4), gen(9))[0].item()
    assert last < 0.7 * first, (first, last)


def _direction(stage: DMDStage, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The DMD direction of the generator step drawn with gen(3), recomputed outside the stage."""
    from vidfx.train.dmd import guided_x0
    from vidfx.train.flow import noisy, predict_x0

    g = gen(3)
    with torch.no_grad():
        x = stage.sample(batch, g, gen(9), grad=False)
        sigma = stage.score_sigma(x, g)
        x_t = noisy(x, torch.randn(x.shape, generator=g), sigma)
        fake = predict_x0(stage.fake, x_t, sigma, batch[1], None)
        real = guided_x0(stage.real, x_t, sigma, batch[1], 3.5, None)
    return dmd_direction(x, fake, real)


def test_training_rollout_is_the_streaming_inference_loop(workdir: Path) -> None:
    model = CausalDiT(SPEC.build())
    model.load_state_dict(read_weights(workdir / "teacher.safetensors"))
    sigmas = step_sigmas(STEPS)
    start = torch.randn(2, *LATENT, generator=gen(0))
    text = torch.randn(2, *TEXT, generator=gen(1))
    with torch.no_grad():
        ours = rollout(model, start, text, sigmas, chunk_frames=2, gen=gen(5))
        cache = model.new_kv_cache(2, 8, 8, window_frames=4)
        cross = model.cross_attention_cache(text)
        g = gen(5)
        ref = torch.cat([denoise_chunk(model, start[:, :, c : c + 2], sigmas, cross, cache, g) for c in (0, 2)], dim=2)
    assert torch.allclose(ours, ref, atol=1e-6)
    # With an exit step and gradients, only that step is differentiable.
    out = rollout(model, start, text, sigmas, chunk_frames=2, gen=gen(5), exits=[0, 1], grad=True)
    assert out.requires_grad


# -- resume ------------------------------------------------------------------------------------------------


def _stage(kind: str, workdir: Path, tmp_path: Path, steps: int, save_every: int):
    r = run(tmp_path, kind, steps=steps, save_every=save_every)
    if kind == "teacher":
        return TeacherStage(
            TeacherConfig(
                latents=str(workdir / "latents"),
                run=r,
                model=SPEC,
                optim=OptimConfig(lr=1e-3),
                ema=EMAConfig(0.9, 1),
            )
        )
    if kind == "student":
        return StudentInitStage(
            StudentInitConfig(
                pairs=str(workdir / "pairs"),
                init=str(workdir / "teacher.safetensors"),
                chunk_frames=2,
                run=r,
                model=SPEC,
                optim=OptimConfig(lr=1e-3),
                ema=EMAConfig(0.9, 1),
            )
        )
    cfg = DMDConfig(
        generator_init=str(workdir / "teacher.safetensors"),
        real_score=str(workdir / "teacher.safetensors"),
        fake_score_init=str(workdir / "other.safetensors"),
        data=str(workdir / "pairs"),
        chunk_frames=2,
        student_steps=STEPS,
        ratio=2,
        generator_input="rollout",
        run=r,
        model=SPEC,
        optim=OptimConfig(lr=1e-3),
        critic_optim=OptimConfig(lr=1e-3),
        ema=EMAConfig(0.9, 1),
    )
    return DMDStage(cfg)


@pytest.mark.parametrize("kind", ["teacher", "student", "dmd"])
def test_a_resumed_run_continues_with_the_same_next_loss(workdir: Path, tmp_path: Path, kind: str) -> None:
    whole = _stage(kind, workdir, tmp_path / "a", steps=5, save_every=4)
    whole.fit()  # steps 0..4, checkpoint at 4 (and at the end)
    resumed = _stage(kind, workdir, tmp_path / "a", steps=5, save_every=4)
    # Roll the newest checkpoint back to step 4: that is what a kill during step 4 leaves.
    ckpts = tmp_path / "a" / kind / "checkpoints"
    (ckpts / "LATEST").write_text("step_00000004")
    resumed.fit()
    assert resumed.step == 5
    assert resumed.history[-1] == whole.history[-1]  # bitwise: every loss of step 4
    for role, m in whole.models.items():
        assert same(params(m), params(resumed.models[role]))
    for role, ema in whole.emas.items():
        assert same(ema.shadow, resumed.emas[role].shadow)
    assert latest_checkpoint(tmp_path / "a" / kind).name == "step_00000005"
    assert (tmp_path / "a" / kind / "losses.png").stat().st_size > 0
    assert (tmp_path / "a" / kind / "config.toml").exists()


def test_data_order_is_a_function_of_step_and_rank() -> None:
    order = DataOrder(10, seed=3)
    seen = [i for step in range(5) for rank in range(2) for i in order.indices(step, rank, 2, 1)]
    assert sorted(seen) == list(range(10))  # one epoch: every sample once across ranks
    assert DataOrder(10, seed=3).indices(7, 1, 2, 3) == order.indices(7, 1, 2, 3)


def test_latent_dataset_draws_one_of_each_clips_captions(workdir: Path) -> None:
    data = LatentDataset(workdir / "latents")
    assert len(data) == 6 and data.latent_shape == LATENT and data.text_shape == TEXT
    picks = {tuple(data.text([5], gen(s))[0, 0, :3].tolist()) for s in range(20)}
    assert len(picks) == 2  # both captions of clip 5, and nothing else
    assert all(any(torch.equal(torch.tensor(p), c[0, :3]) for c in data.captions_of(5)) for p in picks)


def test_ema_copies_then_averages() -> None:
    from vidfx.train.checkpoint import EMA

    m = torch.nn.Linear(2, 2)
    ema = EMA(m, decay=0.5, start_step=2)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m, 1)
    assert torch.equal(ema.shadow["weight"], m.weight)
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema.update(m, 2)
    assert torch.allclose(ema.shadow["weight"], torch.full((2, 2), 2.0))
    assert torch.equal(ema.shadow["bias"], m.bias.detach())


def test_teacher_sigmas_grid_is_merged_monotone() -> None:
    grid = merged_grid(50, 8.0, step_sigmas([1000, 757, 522]))
    assert all(a > b for a, b in zip(grid, grid[1:], strict=False))
    assert len(grid) >= len(teacher_sigmas(50))


# -- data: real videos, real (untrained) autoencoder, real text encoder ------------------------------------


def write_video(path: Path, frames: list, fps: int = 24) -> None:
    """A lossless H.264 mp4 of uint8 (H, W, 3) frames."""
    from fractions import Fraction

    import numpy as np

    from vidfx.offline import VideoWriter

    with VideoWriter(path, frames[0].shape[:2], Fraction(fps), crf=0, options={"preset": "ultrafast"}) as writer:
        writer.write(np.stack(frames))


def gray_video(path: Path, n: int, fps: int = 24) -> None:
    import numpy as np

    write_video(path, [np.full((48, 64, 3), 10 + 6 * i, dtype=np.uint8) for i in range(n)], fps)


def test_decoding_resamples_to_the_target_rate_and_size(tmp_path: Path) -> None:
    from vidfx.train.data import decode_frames

    gray_video(tmp_path / "a.mp4", 36, fps=24)
    frames = list(decode_frames(tmp_path / "a.mp4", fps=8, size=(32, 40)))
    assert len(frames) == 12 and frames[0].shape == (32, 40, 3)
    levels = [float(f.mean()) for f in frames]
    for k, level in enumerate(levels):
        assert abs(level - (10 + 6 * 3 * k)) < 2.5, (k, level)  # output frame k shows source frame 3k


def test_captions_file_is_validated_and_the_split_is_stable(tmp_path: Path) -> None:
    from vidfx.train.data import iter_clips, read_captions, split_of

    (tmp_path / "captions.jsonl").write_text('{"file": "a.mp4", "captions": ["x", "y"], "look": "ink"}\n\n')
    assert read_captions(tmp_path)["a.mp4"].captions == ("x", "y")
    (tmp_path / "captions.jsonl").write_text('{"file": "a.mp4", "captions": []}\n')
    with pytest.raises(ValueError, match="captions.jsonl:1"):
        read_captions(tmp_path)
    names = [f"v{i}.mp4" for i in range(400)]
    held = [n for n in names if split_of(n, 0.25) == "heldout"]
    assert 70 < len(held) < 130 and held == [n for n in names if split_of(n, 0.25) == "heldout"]
    # `vidfx dataset`'s layout: videos in a subfolder, one scene in several looks sharing a `source`.
    (tmp_path / "clips").mkdir()
    lines = []
    for scene in range(12):
        for look in (None, "ink"):
            name = f"clips/{scene:02d}_{look or 'source'}.mp4"
            gray_video(tmp_path / name, 4, fps=8)
            lines.append(
                f'{{"file": "{name}", "captions": ["c"], "look": {json.dumps(look)}, '
                f'"source": "clips/{scene:02d}_source.mp4", "clip": {scene}}}'
            )
    (tmp_path / "captions.jsonl").write_text("\n".join(lines))
    held = [c.file for c in iter_clips(tmp_path, 4, 8, (16, 16), "heldout", heldout=0.5)]
    train = [c.file for c in iter_clips(tmp_path, 4, 8, (16, 16), "train", heldout=0.5)]
    assert held and train and len(held) + len(train) == 24
    scenes = {f[:8] for f in held}
    assert not scenes & {f[:8] for f in train}  # a scene and its looks stay together
    assert all(f"{s}_source.mp4" in held and f"{s}_ink.mp4" in held for s in scenes)


def test_encoding_caches_latents_and_every_caption_and_resumes(tmp_path: Path) -> None:
    from vidfx.autoencoder import load_autoencoder
    from vidfx.text import HashTextEncoder
    from vidfx.train.data import encode_dataset

    videos = tmp_path / "videos"
    videos.mkdir()
    for name, n in (("a.mp4", 20), ("b.mp4", 11)):
        gray_video(videos / name, n, fps=8)
    lines = [
        {"file": "a.mp4", "captions": ["a gray fade", "slow fade to white"], "look": None},
        {"file": "b.mp4", "captions": ["another fade"], "look": "ink"},
    ]
    (videos / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    ae, text = load_autoencoder("random:tiny"), HashTextEncoder()
    kw = {"frames": 9, "fps": 8, "size": (32, 32), "shard_size": 1, "progress": False}
    assert encode_dataset(videos, tmp_path / "lat", ae, text, **kw) == 3  # a: 2 clips of 9 frames, b: 1
    data = LatentDataset(tmp_path / "lat")
    assert data.latent_shape == (16, 3, 4, 4) and data.text_shape == (16, 64)
    assert len(data.captions_of(0)) == 2 and len(data.captions_of(2)) == 1
    assert torch.equal(data.captions_of(2)[0], text.encode(["another fade"])[0])
    assert data.meta["looks"] == [None, None, "ink"]
    from vidfx.train.data import iter_clips

    first = next(iter_clips(videos, 9, 8, (32, 32)))
    assert torch.allclose(data.reader.row("latents", 0), ae.encode(first.frames[None])[0], atol=1e-5)
    # A run killed after two shards: drop the last one from the manifest; re-running restores it exactly.
    manifest = json.loads((tmp_path / "lat" / "manifest.json").read_text())
    last = data.reader.row("latents", 2).clone()
    manifest["shards"], manifest["count"] = manifest["shards"][:2], 2
    for key in ("files", "clip_index", "captions", "looks"):
        manifest["meta"][key] = manifest["meta"][key][:2]
    (tmp_path / "lat" / "manifest.json").write_text(json.dumps(manifest))
    assert encode_dataset(videos, tmp_path / "lat", ae, text, **kw) == 3
    assert torch.equal(LatentDataset(tmp_path / "lat").reader.row("latents", 2), last)


# -- a real kill ------------------------------------------------------------------------------------------


def test_a_killed_training_process_resumes_with_the_same_next_loss(workdir: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    toml = tmp_path / "teacher.toml"
    model = ", ".join(f"{k} = {v}" for k, v in SPEC.overrides.items())
    body = (
        f'latents = "{workdir / "latents"}"\n[run]\nout = "{tmp_path / "killed"}"\nsteps = 100000\n'
        "batch_size = 2\nsave_every = 1\nprogress = false\n"
        f'[model]\npreset = "tiny"\noverrides = {{ {model} }}\n[optim]\nlr = 1e-3\n'
    )
    toml.write_text(body)
    code = (
        "import sys, torch; torch.set_num_threads(1); import argparse; from vidfx.commands import train; "
        "p = argparse.ArgumentParser(); train.register(p); a = p.parse_args(sys.argv[1:]); a.func(a)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code, "teacher", "--config", str(toml)], env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (tmp_path / "killed" / "checkpoints" / "step_00000004").exists():
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = latest_checkpoint(tmp_path / "killed")
    assert killed_at is not None, "the process never checkpointed"
    step = int(killed_at.name.split("_")[1])
    cfg = load_config(TeacherConfig, toml)
    resumed = TeacherStage(cfg)
    resumed.fit(step + 1)
    assert resumed.history[-1]["step"] == step
    cfg.run.out = str(tmp_path / "whole")
    whole = TeacherStage(cfg)
    whole.fit(step + 1)
    assert resumed.history[-1] == whole.history[-1]


# -- eval metrics ------------------------------------------------------------------------------------------


def test_frechet_distance_matches_closed_forms() -> None:
    from vidfx.train.eval import frechet_distance, frechet_from_stats

    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([2.0, -1.0])
    a, b = torch.tensor([1.0, 4.0]), torch.tensor([9.0, 0.25])
    expect = 8.0 + float(((a.sqrt() - b.sqrt()) ** 2).sum())  # diagonal: Σ (√a − √b)²
    assert math.isclose(frechet_from_stats(mu1, a.diag(), mu2, b.diag()), expect, rel_tol=1e-9)
    # Non-commuting covariances: against tr√(C1·C2) from the eigenvalues of the (non-symmetric) product.
    c1 = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    c2 = torch.tensor([[1.0, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    tr_sqrt = float(torch.linalg.eigvals(c1 @ c2).real.sqrt().sum())
    expect = float(c1.trace() + c2.trace()) - 2 * tr_sqrt
    assert math.isclose(frechet_from_stats(torch.zeros(2), c1, torch.zeros(2), c2), expect, rel_tol=1e-9)
    x = torch.randn(200, 5, generator=gen(0))
    assert frechet_distance(x, x) < 1e-9
    assert math.isclose(frechet_distance(x, x + 3.0), 9.0 * 5, rel_tol=1e-6)


def test_flicker_and_structure_metrics() -> None:
    from vidfx.train.eval import edge_map, flicker, ssim, structure_kept

    g = gen(0)
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 1, 32)
    moving = torch.stack([torch.roll(ramp.expand(1, 3, 1, 32, 32), s, dims=-1)[:, :, 0] for s in range(8)], dim=2)
    assert math.isclose(flicker(moving, moving), 1.0)
    assert flicker(moving[:, :, :1].expand_as(moving), moving) == 0.0  # frozen
    noisy = moving + 0.2 * torch.randn(moving.shape, generator=g)
    assert flicker(noisy, moving) > 1.5
    step = torch.zeros(1, 3, 1, 16, 16)
    step[..., 8:] = 1.0
    edges = edge_map(step)[0, 0]
    assert edges[:, 7:9].min() > 0.2 and edges[:, :6].max() == 0 and edges[:, 10:].max() == 0
    img = torch.rand(4, 1, 24, 24, generator=g)
    assert math.isclose(ssim(img, img), 1.0, rel_tol=1e-6)
    assert math.isclose(structure_kept(noisy, noisy - 0.3), 1.0, rel_tol=1e-5)  # brightness moves no edge
    assert structure_kept(noisy, torch.rand(noisy.shape, generator=g) * 2 - 1) < 0.5


def test_evaluation_of_a_perfect_generator_is_zero_distance_no_flicker_no_drift() -> None:
    from vidfx.train.components import ClipFeatureNet
    from vidfx.train.eval import EvalSet, clip_features, evaluate_drift, evaluate_t2v

    g = gen(0)
    clips = torch.rand(6, 3, 5, 32, 32, generator=g) * 2 - 1
    data = EvalSet(clips=clips, text=torch.arange(6.0).view(6, 1, 1), latents=clips, looks=[None] * 6)
    net = ClipFeatureNet(num_classes=2)

    def replay(text: torch.Tensor, _: torch.Generator) -> torch.Tensor:  # "generates" the held-out clips
        return clips[text[:, 0, 0].long()]

    def replay_long(text: torch.Tensor, _: torch.Generator) -> torch.Tensor:
        return clips[text[:, 0, 0].long()].repeat(1, 1, 3, 1, 1)

    identity = lambda x: x  # noqa: E731 - the "latents" are pixels here
    m = evaluate_t2v(replay, data, identity, net, batch=4)
    assert m["fd"] < 1e-6 and math.isclose(m["flicker"], 1.0)
    curve = evaluate_drift(replay_long, data, identity, net, frames=5, batch=4)
    assert len(curve) == 3 and max(curve) < 1e-6
    shifted = evaluate_t2v(lambda t, gg: replay(t, gg).flip(-1), data, identity, net, batch=4)
    assert shifted["fd"] > 1e-4  # the features see a mirrored world
    assert clip_features(net, clips).shape == (6, net.dim)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    from vidfx.train.distributed import enable_gradient_checkpointing

    plain, ckpt = random_dit(3), random_dit(3)
    enable_gradient_checkpointing(ckpt)
    x, text = torch.randn(2, *LATENT, generator=gen(0)), torch.randn(2, *TEXT, generator=gen(1))
    t = torch.tensor([[300.0, 300.0, 700.0, 700.0], [50.0, 50.0, 900.0, 900.0]])
    for m in (plain, ckpt):
        m(x, t, text, chunk_frames=2).pow(2).mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-5), name
    assert set(dict(plain.named_parameters())) == set(dict(ckpt.named_parameters()))


@pytest.mark.slow
def test_ddp_and_fsdp_under_torchrun_agree_and_resume(workdir: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo): replicas stay identical, DDP and FSDP see the same losses (both average the
    same global batch), DMD's chunk-by-chunk rollout runs under FSDP, checkpoints resume."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    results = {}
    for mode in ("ddp", "fsdp"):
        out = tmp_path / mode
        out.mkdir()
        cmd = [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            str(root / "tests" / "distributed_worker.py"),
            mode,
            str(workdir),
            str(out),
            json.dumps(SPEC.overrides),
        ]
        subprocess.run(cmd, env=env, check=True, timeout=300, capture_output=True)
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
        assert all(r["replicas_equal"] for r in ranks)
        assert ranks[0]["dmd"] == ranks[1]["dmd"]  # logged losses are averaged over ranks
        assert ranks[0]["resumed_from"] == 4
        results[mode] = ranks[0]
    for key in ("teacher", "dmd"):
        for a, b in zip(results["ddp"][key], results["fsdp"][key], strict=True):
            for name in a:
                if "loss" in name:
                    assert math.isclose(a[name], b[name], rel_tol=1e-4, abs_tol=1e-6), (key, name)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "train").glob("*.toml")))
def test_example_configs_load(path: Path) -> None:
    from vidfx.train.ablation import AblationConfig

    kinds = {"teacher": TeacherConfig, "ode": OdePairsConfig, "student": StudentInitConfig, "dmd": DMDConfig,
             "paired_v2v": PairedV2VConfig}  # fmt: skip
    cls = next((c for prefix, c in kinds.items() if path.name.startswith(prefix)), AblationConfig)
    cfg = load_config(cls, path)
    assert cfg.model.build().dim > 0
    if cls is PairedV2VConfig:  # each experiment changes the stage somehow
        assert cfg.look_repeats or cfg.dmd.real_score
        assert all(type(n) is int for n in cfg.look_repeats.values())


def test_ode_pairs_split_over_processes_are_the_same_pairs(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = pairs_config(workdir, tmp_path / "p", num_pairs=6, shard_size=2, batch_size=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):  # what two torchrun processes do, one after the other
        monkeypatch.setenv("RANK", str(rank))
        assert generate_ode_pairs(cfg) == 3
    split, whole = OdePairs(tmp_path / "p"), OdePairs(workdir / "pairs")
    assert len(split) == 6 and [len(r) for r in split.readers] == [3, 3]
    for reader in split.readers:
        for row, index in enumerate(reader.meta["pair_index"]):
            # Equal up to the rounding of differently batched matmuls (batch 2 here, 3 there).
            assert torch.allclose(reader.row("states", row), whole.batch([index])[0][0], atol=1e-5)


def test_the_recipe_learns_a_two_caption_toy(tmp_path: Path) -> None:
    """Caption A's clips are +0.8 everywhere, caption B's −0.8. The teacher's Euler samples, the
    ODE-initialised student's and the DMD student's few-step streaming samples must land on the right side
    for each caption — which a sign or convention error between training targets and samplers would break."""
    from vidfx.train.eval import student_sampler, teacher_sampler

    g = gen(0)
    lat = torch.cat([torch.full((2, *LATENT), 0.8), torch.full((2, *LATENT), -0.8)])
    lat = lat + 0.1 * torch.randn(4, *LATENT, generator=g)
    ta, tb = torch.randn(1, *TEXT, generator=g), torch.randn(1, *TEXT, generator=g)
    write_latent_cache(tmp_path / "lat", lat, [ta, ta, tb, tb])
    fast = OptimConfig(lr=3e-3)
    teacher = TeacherStage(
        TeacherConfig(latents=str(tmp_path / "lat"), run=run(tmp_path, "teacher", steps=100), model=SPEC, optim=fast)
    )
    teacher.fit()

    def means(sampler) -> tuple[float, float]:
        with torch.no_grad():
            return float(sampler(ta.expand(4, -1, -1), gen(1)).mean()), float(
                sampler(tb.expand(4, -1, -1), gen(2)).mean()
            )

    a, b = means(teacher_sampler(teacher.model, LATENT, 10, guidance=1.0))
    assert a > 0.5 and b < -0.5, (a, b)
    generate_ode_pairs(
        OdePairsConfig(
            teacher=str(tmp_path / "teacher"),
            latents=str(tmp_path / "lat"),
            out=str(tmp_path / "pairs"),
            num_pairs=8,
            sample_steps=10,
            guidance=1.0,
            student_steps=STEPS,
            model=SPEC,
            progress=False,
        )
    )
    student = StudentInitStage(
        StudentInitConfig(
            pairs=str(tmp_path / "pairs"),
            init=str(tmp_path / "teacher"),
            chunk_frames=2,
            run=run(tmp_path, "student", steps=30),
            model=SPEC,
            optim=OptimConfig(lr=1e-3),
        )
    )
    student.fit()
    a, b = means(student_sampler(student.model, LATENT, STEPS, chunk_frames=2))
    assert a > 0.5 and b < -0.5, (a, b)
    dmd = DMDStage(
        DMDConfig(
            generator_init=str(tmp_path / "student"),
            real_score=str(tmp_path / "teacher"),
            data=str(tmp_path / "pairs"),
            chunk_frames=2,
            student_steps=STEPS,
            guidance=0.5,
            ratio=2,
            run=run(tmp_path, "dmd", steps=10),
            model=SPEC,
            optim=OptimConfig(lr=1e-4),
            critic_optim=OptimConfig(lr=1e-3),
        )
    )
    dmd.fit()
    a, b = means(student_sampler(dmd.generator, LATENT, STEPS, chunk_frames=2))
    assert a > 0.5 and b < -0.5, (a, b)


def test_look_classifier_features_average_its_windows() -> None:
    from vidfx.data.look_classifier import LookClassifier, LookClassifierConfig
    from vidfx.train.components import LookFeatures

    torch.manual_seed(0)
    classifier = LookClassifier(LookClassifierConfig(frames=4, size=32, widths=(8, 16))).eval()
    net = LookFeatures(classifier)
    clips = torch.rand(2, 3, 9, 40, 40, generator=gen(0)) * 2 - 1  # 9 frames: two windows, one frame left over
    feats = net.features(clips)
    frames = ((clips + 1) / 2).transpose(1, 2)  # (B, T, 3, H, W) in [0, 1]
    with torch.no_grad():
        expect = (classifier.features(frames[:, 0:4]) + classifier.features(frames[:, 4:8])) / 2
    assert feats.shape == (2, classifier.config.embed_dim) and torch.allclose(feats, expect, atol=1e-6)


@pytest.mark.slow
def test_the_ablation_driver_runs_end_to_end(tmp_path: Path) -> None:
    """Every stage, every evaluation and the report, on a micro configuration (plumbing, not quality)."""
    import numpy as np

    from vidfx.train.ablation import AblationConfig, run_ablation, variant_model

    videos = tmp_path / "videos"
    videos.mkdir()
    lines = []
    for i in range(6):
        frames = [np.full((32, 32, 3), (40 * i + 8 * t) % 255, dtype=np.uint8) for t in range(18)]
        write_video(videos / f"v{i}.mp4", frames, fps=8)
        look = ("dark", "light")[i % 2]
        entry = {"file": f"v{i}.mp4", "captions": [f"a {look} fade {i}"], "look": look}
        if i in (0, 2):  # scenes also given plain, for the paired video-to-video stage (both in "train")
            plain = [np.full((32, 32, 3), (20 * i + 8 * t) % 255, dtype=np.uint8) for t in range(18)]
            write_video(videos / f"p{i}.mp4", plain, fps=8)
            lines.append(json.dumps({"file": f"p{i}.mp4", "captions": ["plain"], "look": None, "source": f"p{i}.mp4"}))
            entry["source"] = f"p{i}.mp4"
        lines.append(json.dumps(entry))
    (videos / "captions.jsonl").write_text("\n".join(lines))
    cfg = AblationConfig(
        videos=str(videos),
        out=str(tmp_path / "out"),
        autoencoder="random:tiny",
        text="hash:16:4",
        frames=9,
        fps=8.0,
        size=[32, 32],
        heldout=0.4,
        chunk_frames=1,
        eval_step_lists=[[1000, 500], [1000]],
        student_steps=[1000, 500],
        teacher_sample_steps=2,
        teacher_steps=2,
        causal_teacher_steps=1,  # fine-tuned from the bidirectional teacher
        student_init_steps=2,
        dmd_steps=2,
        dmd_ratio=1,
        paired_v2v_steps=2,
        paired_source_steps=2,
        num_pairs=2,
        feature_steps=2,
        drift_length=2,
        v2v_strengths=[0.5],
        batch_size=2,
        progress=False,
        model=ModelSpec("tiny", {**SPEC.overrides, "in_dim": 16, "out_dim": 16, "text_len": 4}),
    )
    with pytest.raises(ValueError, match="unknown stage"):
        run_ablation(dataclasses.replace(cfg, stages=["teacher", "tea"]))
    # A process that runs some stages, then one that runs all: finished stages are not redone.
    assert run_ablation(dataclasses.replace(cfg, stages=["encode", "teacher", "teacher_causal"])) is None
    assert not (tmp_path / "out" / "student_ode").exists()
    teacher_ckpts = sorted((tmp_path / "out" / "teacher" / "checkpoints").iterdir())
    stamps = [c.stat().st_mtime_ns for c in teacher_ckpts]
    results = run_ablation(cfg)
    assert results is not None
    assert [c.stat().st_mtime_ns for c in sorted((tmp_path / "out" / "teacher" / "checkpoints").iterdir())] == stamps
    labels = {r["model"] for r in results["rows"]}
    assert {
        "teacher (bidirectional)",
        "causal student, ODE init",
        "ODE init + asymmetric DMD",
        "DMD without ODE init",
        "ODE init + DMD, causal teacher",
    } <= labels
    assert all(math.isfinite(r["fd"]) and math.isfinite(r["flicker"]) for r in results["rows"])
    assert all(len(curve) == 2 for curve in results["drift"].values())
    for name in ("ablation.md", "ablation.png", "ablation.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert latest_checkpoint(tmp_path / "out" / "paired_v2v") is not None
    assert latest_checkpoint(tmp_path / "out" / "paired_source") is not None

    # The recipe's student → a weights folder the serving loader reads (what ships as `default`).
    from vidfx.autoencoder.loading import load_autoencoder, save_autoencoder
    from vidfx.config import ModelSettings
    from vidfx.loading import load_pipeline
    from vidfx.pipeline import StreamParams
    from vidfx.train.export import export_model, text_spec_meta

    ae = tmp_path / "ae.safetensors"
    save_autoencoder(load_autoencoder("random:tiny"), ae)
    meta = LatentDataset(tmp_path / "out" / "latents").meta
    stats = {k: meta[k] for k in ("latent_mean", "latent_std")}  # the normalisation the cache was made with
    folder = export_model(
        tmp_path / "out" / "dmd_ode", cfg.model.build(), ae, tmp_path / "weights", text_spec_meta(cfg.text),
        latent_stats=stats,
    )  # fmt: skip
    other = load_autoencoder("random:tiny")
    other.latent_std.mul_(3.0)  # a DiT trained on these latents would see them at a third of the scale
    save_autoencoder(other, tmp_path / "other_ae.safetensors")
    with pytest.raises(ValueError, match="latent_std is not the one the training latents were normalised with"):
        export_model(tmp_path / "out" / "dmd_ode", cfg.model.build(), tmp_path / "other_ae.safetensors",
                     tmp_path / "w2", latent_stats=stats)  # fmt: skip
    pipe = load_pipeline(ModelSettings(name=str(folder), width=32, height=32))
    student = CausalDiT(cfg.model.build())
    student.load_state_dict(read_weights(tmp_path / "out" / "dmd_ode"))
    for name, value in pipe.dit.state_dict().items():  # stored in fp16
        torch.testing.assert_close(value, student.state_dict()[name].half().float())
    out = pipe.process_chunk(pipe.new_stream_state(StreamParams()), np.zeros((1, 32, 32, 3), np.uint8))
    assert out.shape == (1, 32, 32, 3)
    # The source-conditioned student exports with its wider input and serves.
    spec = variant_model(cfg, "paired_source").build()
    assert spec.in_dim == 2 * spec.out_dim == 32
    folder = export_model(tmp_path / "out" / "paired_source", spec, ae, tmp_path / "w3", text_spec_meta(cfg.text),
                          latent_stats=stats)  # fmt: skip
    pipe = load_pipeline(ModelSettings(name=str(folder), width=32, height=32))
    assert pipe.dit.cfg.in_dim == 32
    out = pipe.process_chunk(pipe.new_stream_state(StreamParams()), np.zeros((1, 32, 32, 3), np.uint8))
    assert out.shape == (1, 32, 32, 3)
