"""Training: the CausVid recipe that turns a bidirectional video DiT into a causal few-step one.

    data.py          video folder + captions.jsonl → clips → cached latents and caption embeddings
    teacher.py       stage 1: flow-matching teacher (bidirectional; or causal with diffusion forcing)
    ode_pairs.py     stage 2: the teacher's CFG Euler trajectories at the student's noise levels
    student_init.py  stage 3: the causal student regresses the ODE endpoints (CausVid's initialisation)
    dmd.py           stage 4: asymmetric distribution matching distillation (+ Self-Forcing-style rollout)
    eval.py          offline metrics: Fréchet proxy (not FVD), flicker, drift, v2v structure vs style
    ablation.py      CausVid's ablation end to end
    trainer.py, checkpoint.py, distributed.py, config.py, shards.py, flow.py, components.py: the machinery

Commands: `vidfx train …`, `vidfx eval …`; guide: docs/training.md.
"""
