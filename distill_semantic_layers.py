r"""Pre-distil Show-o2's semantic layers from a SigLIP teacher (see training/distill.py for the recipe).

    python distill_semantic_layers.py config=configs/showo2_semantic_distill.yaml [key=value ...]
    python distill_semantic_layers.py                      # tiny CPU run (random tiny teacher, generated data)

Writes ``<output_dir>/semantic_layers.safetensors`` with exactly the keys ``image_embedder_und.*``,
``position_embedding.weight``, ``und_trans.*``; stage 1 loads it strictly via
``model.pretrained.semantic_layers``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from utils.config import ConfigError, load_config


def distill(cfg) -> dict:
    import torch
    from accelerate.utils import set_seed

    from models import Showo2Config
    from training.distill import (
        SemanticStudent,
        build_teacher,
        cosine_distill_loss,
        noised_latents,
        save_semantic_layers,
        teacher_features,
    )
    from training.logging import RunLogger, peak_memory
    from training.loop import build_data, build_vae, setup_accelerator
    from training.optim import build_scheduler
    from utils.config import save_config, to_plain

    exp, tr, dc = cfg.experiment, cfg.training, cfg.distill
    accelerator = setup_accelerator(cfg)
    rank, device = accelerator.process_index, accelerator.device
    out_dir = Path(exp.output_dir)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    seed = int(tr.seed) + rank
    set_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    ov = cfg.model.get("overrides")
    config = Showo2Config.preset(str(cfg.model.preset), **(to_plain(ov) if ov else {}))
    teacher = build_teacher(dc.get("teacher"), config.siglip, seed=int(cfg.model.get("init_seed", 0))).to(device)
    torch.manual_seed(int(cfg.model.get("init_seed", 0)))
    student = SemanticStudent(config)
    if dc.get("init_from_teacher", True):
        student.init_from_teacher(teacher)
    vae = build_vae(cfg, device)
    data = build_data(cfg, int(cfg.data.get("synthetic", {}).get("vocab_size", 512)), rank, accelerator.num_processes, int(tr.seed))
    max_steps = int(tr.max_train_steps)
    opt = torch.optim.AdamW(student.parameters(), lr=float(cfg.optimizer.lr), betas=tuple(cfg.optimizer.betas),
                            eps=float(cfg.optimizer.eps), weight_decay=float(cfg.optimizer.weight_decay))
    sched = build_scheduler(opt, to_plain(cfg.lr_scheduler), max_steps)
    student, opt = accelerator.prepare(student, opt)
    logger = RunLogger(out_dir, cfg.get("logging", {}), is_main=accelerator.is_main_process, total_steps=max_steps,
                       run_name=str(exp.name))
    clip = float(tr.get("max_grad_norm") or 0.0)
    log_every = int(cfg.logging.get("log_every", 1))
    out_file = out_dir / str(dc.get("output_name", "semantic_layers.safetensors"))
    for step in range(1, max_steps + 1):
        t0 = time.perf_counter()
        batch = next(data)
        keep = batch.get("visual_valid", torch.ones(batch["pixels"].shape[0], dtype=torch.bool))
        if "visual_valid" not in batch and "t_min" in batch and "visuals" in batch:  # synthetic: drop padding dummies
            keep = torch.tensor([j < len(row) for row in batch["visuals"] for j in range(batch["modality_positions"].shape[1])])
        pixels = batch["pixels"][keep].to(device)
        with torch.no_grad():
            x1 = vae.encode(pixels, sample=True, generator=gen)
            xt, _ = noised_latents(x1, gen, float(dc.get("p_clean", 0.5)),
                                   accelerator.unwrap_model(student).patch_size)
            target = teacher_features(teacher, pixels, accelerator.unwrap_model(student).grid(x1))
        with accelerator.autocast():
            loss = cosine_distill_loss(student(xt), target)
        accelerator.backward(loss)
        if clip > 0:
            accelerator.clip_grad_norm_(student.parameters(), clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        logger.advance(1)
        if step % log_every == 0 or step == max_steps:
            logger.log(step, {"loss": accelerator.reduce(loss.detach(), "mean").item(), "lr": sched.get_last_lr()[0],
                              "step_time_s": time.perf_counter() - t0})
        save_every = int(exp.get("save_every") or 0)
        if (save_every and step % save_every == 0) or step == max_steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_semantic_layers(accelerator.unwrap_model(student), out_file)
    summary = {"steps": max_steps, "output": str(out_file), **peak_memory()}
    logger.info(f"done: {summary}")
    logger.close()
    accelerator.end_training()
    return summary


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = load_config(argv, default_config=Path(__file__).parent / "configs/tiny/distill.yaml", usage=__doc__)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    distill(cfg)


if __name__ == "__main__":
    main()
