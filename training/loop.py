"""The one Show-o2 training loop (both stages, video, interleaved; stages differ only by YAML).

    batch -> [no grad: VAE sample, t, noise, x_t, u] -> model -> ntp*L_ntp + flow*L_flow -> step

Reads like nanoGPT: ``train(cfg)`` sets things up, then one ``while`` loop. Everything distributed
goes through accelerate (single process, DDP, DeepSpeed ZeRO-2/3, FSDP), chosen by the launcher
config (``accelerate_configs/``); see ``setup_accelerator`` for what we pin.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from datasets.sequence import VisualInfo
from flow.schedule import interpolate, sample_train_timesteps, velocity_target
from training import checkpointing as ckpt
from training.logging import NonFiniteGuard, RunLogger, peak_memory, save_image_grid
from training.optim import build_optimizer, build_scheduler, freeze_params, group_lrs, trainable_summary
from utils.config import save_config, to_plain

__all__ = ["train", "setup_accelerator", "micro_batch_rows", "flow_inputs", "build_model", "build_data", "build_vae"]


# ================================================================================================
# accelerator


def _mixed_precision(cfg: DictConfig) -> str:
    mp = str(cfg.training.get("mixed_precision", "auto"))
    if mp == "auto":  # bf16 on GPU (official), fp32 on CPU (exact, and CPU bf16 is slow)
        return "bf16" if torch.cuda.is_available() else "no"
    return mp


def micro_batch_rows(data: Mapping[str, Any]) -> int | None:
    """Rows per micro-batch per process (DeepSpeed's ``train_micro_batch_size_per_gpu``).

    A concat-mode mixed loader puts every source's ``batch_size`` rows into each micro-batch, so the
    number is their sum, derived here rather than kept as a second copy in the config that a CLI change
    of one source's rows would leave behind. An explicit ``data.micro_batch_size`` must agree with it.
    Other loaders (prob mode, synthetic) take ``data.micro_batch_size`` as given (None when unset)."""
    given = data.get("micro_batch_size")
    if data.get("source") == "mixed" and data.get("mode", "concat") == "concat" and data.get("sources"):
        rows = sum(int(s["batch_size"]) for s in data["sources"])
        if given is not None and int(given) != rows:
            raise ValueError(f"data.micro_batch_size={given} but the concat sources hold {rows} rows per micro-batch "
                             "(sum of their batch_size); drop micro_batch_size to derive it")
        return rows
    return None if given is None else int(given)


def setup_accelerator(cfg: DictConfig):
    """Accelerator for whatever the launcher asked for, with the run config pinned on top.

    * DeepSpeed: ``gradient_clipping`` comes from ``training.max_grad_norm`` (accelerate's ``auto``
      would silently mean 1.0, and DeepSpeed ignores ``clip_grad_norm_``; quirk 3), micro-batch and
      accumulation from the run config, ZeRO-3 gathers 16-bit weights for saving.
    * CPU: DDP needs ``cpu=True`` (else each rank silently trains alone); DeepSpeed/FSDP need an
      explicit gloo process group (environment-notes §1-3).
    """
    from accelerate import Accelerator, DeepSpeedPlugin
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    tr = cfg.training
    micro = micro_batch_rows(cfg.data)  # checked on every backend, used by DeepSpeed
    use_ds = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    use_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    on_cpu = not torch.cuda.is_available()
    ga = int(tr.get("gradient_accumulation_steps", 1))
    handlers: list[Any] = [DistributedDataParallelKwargs(find_unused_parameters=bool(tr.get("find_unused_parameters", False)))]
    if on_cpu and (use_ds or use_fsdp):
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    kwargs: dict[str, Any] = dict(
        mixed_precision=_mixed_precision(cfg),
        gradient_accumulation_steps=ga,
        kwargs_handlers=handlers,
        cpu=on_cpu and not (use_ds or use_fsdp),
    )
    if use_ds:
        base = DeepSpeedPlugin()  # reads the launcher's zero stage / offload settings from the env
        ds = dict(base.deepspeed_config)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if micro is None:
            raise ValueError("DeepSpeed needs data.micro_batch_size for a prob-mode or synthetic loader")
        ds.update(
            gradient_clipping=float(tr.get("max_grad_norm") or 0.0),
            gradient_accumulation_steps=ga,
            train_micro_batch_size_per_gpu=micro,
            train_batch_size=micro * ga * world,
        )
        zero = dict(ds.get("zero_optimization", {}))
        if int(zero.get("stage", 0)) == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        ds["zero_optimization"] = zero
        if on_cpu:  # keep torch AdamW (same math) instead of JIT-building DeepSpeed's CPU Adam
            ds["zero_force_ds_cpu_optimizer"] = False
        for k in ("bf16", "fp16"):
            ds.pop(k, None)  # accelerate fills these from mixed_precision
        # the launcher's config-file fields are consumed above; accelerate refuses them next to a full dict
        os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=ds)
    fsdp_plugin = None
    if use_fsdp and on_cpu:
        # accelerate only enables FSDP for GPU-like devices: build the plugin without module-state sync
        # and force the distributed type (test-only path, environment-notes §3)
        from accelerate import FullyShardedDataParallelPlugin

        fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=int(os.environ.get("FSDP_VERSION", "2")), reshard_after_forward=True, sync_module_states=False,
            auto_wrap_policy="transformer_based_wrap", state_dict_type="FULL_STATE_DICT",
            transformer_cls_names_to_wrap=os.environ.get(
                "FSDP_TRANSFORMER_CLS_TO_WRAP", "Qwen2DecoderLayer,SiglipEncoderLayer,ModulatedAttentionBlock").split(","),
        )
        kwargs["fsdp_plugin"] = fsdp_plugin
    accelerator = Accelerator(**kwargs)
    if torch.cuda.is_available() and tr.get("allow_tf32", True):  # official enable_tf32 (fp32 matmuls only)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if fsdp_plugin is not None:
        from accelerate.utils import DistributedType

        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = fsdp_plugin
    return accelerator


# ================================================================================================
# model / vae / data


def build_model(cfg: DictConfig, vocab_size: int | None, log=print):
    """Show-o2 model from a preset (+ overrides) or pretrained parts; then ``init_from`` hand-off."""
    from models import Showo2Config, Showo2Model

    m = cfg.model
    overrides = to_plain(m.get("overrides") or OmegaConf.create({}))
    if vocab_size is not None:
        overrides.setdefault("llm_vocab_size", int(vocab_size))
    overrides["gradient_checkpointing"] = bool(m.get("gradient_checkpointing", False))
    pre = m.get("pretrained") or {}
    if pre.get("showo"):  # a released (official layout) or exported Show-o2, e.g. VIST from showlab/show-o2-1.5B
        from models.checkpoints import load_official_checkpoint

        model = load_official_checkpoint(str(pre.showo), **({"gradient_checkpointing": True} if m.get("gradient_checkpointing") else {}))
        model.train()
    elif pre.get("llm") or pre.get("siglip"):
        from models.checkpoints import from_pretrained_backbones, resolve_path

        config = Showo2Config.preset(str(m.preset), **overrides)
        model = from_pretrained_backbones(config, resolve_path(str(pre.llm)), resolve_path(str(pre.siglip)))
    else:
        torch.manual_seed(int(m.get("init_seed", 0)))  # same random init on every rank
        model = Showo2Model(Showo2Config.preset(str(m.preset), **overrides))
    if pre.get("semantic_layers"):
        from models.checkpoints import load_semantic_layers

        load_semantic_layers(model, str(pre.semantic_layers))  # strict: every expected key consumed (§8.1)
        log(f"semantic layers loaded from {pre.semantic_layers}")
    init_from = cfg.experiment.get("init_from")
    if init_from:
        rep = ckpt.load_init_weights(model, init_from, list(cfg.experiment.get("params_not_load") or []))
        log(f"init_from {init_from}: loaded, dropped {len(rep['dropped'])} keys by params_not_load")
    if m.get("gradient_checkpointing"):
        _enable_gradient_checkpointing(model)
    return model


def _enable_gradient_checkpointing(model) -> None:
    """Call the model's switch and verify it took effect (the official flag was never read; quirk 4)."""
    for fn in ("gradient_checkpointing_enable", "enable_gradient_checkpointing", "set_gradient_checkpointing"):
        if hasattr(model, fn):
            getattr(model, fn)()
            break
    flags = [getattr(mod, "gradient_checkpointing", False) for mod in model.modules()]
    if not any(bool(f) is True for f in flags):
        raise RuntimeError("model.gradient_checkpointing requested but the model reports it off")


def build_vae(cfg: DictConfig, device: torch.device):
    """Frozen Wan2.1 VAE (fp32 weights, bf16 autocast on GPU), or None when the data carries latents."""
    v = cfg.get("vae")
    if not v or v.get("source") in (None, "none"):
        return None
    from models.vae import WanVAE

    autocast = torch.bfloat16 if (torch.cuda.is_available() and v.get("autocast_bf16", True)) else None
    if v.source == "random":
        vae = WanVAE.from_config(str(v.config), seed=int(v.get("seed", 0)), autocast_dtype=autocast)
    else:
        vae = WanVAE.load(str(v.source), autocast_dtype=autocast)
    return vae.to(device).eval().requires_grad_(False)


def build_data(cfg: DictConfig, vocab_size: int, rank: int, world: int, seed: int, patch_size: int = 2):
    """An infinite batch iterator with ``state_dict()``/``load_state_dict()``; sharded by rank.
    ``patch_size``: the model's, so the loaders lay out (latent h / p) x (latent w / p) visual tokens."""
    d = cfg.data
    if d.source == "synthetic":
        from training.synthetic import SyntheticSource

        return SyntheticSource(to_plain(d.synthetic), vocab_size=vocab_size, seed=seed, rank=rank, world_size=world)
    if d.source == "mixed":
        from datasets.mixed import build_mixed_loader  # data engineer's mixed loader (sharded, resumable)

        return build_mixed_loader(d, rank=rank, world_size=world, seed=seed, patch_size=patch_size)
    raise ValueError(f"unknown data.source {d.source!r} (synthetic, mixed)")


def resolve_max_steps(spec: Any, data) -> int:
    """An int, or ``epoch:<source>``: one pass over that source's per-rank shard (official stage 2:
    floor(N / (batch_size x world_size)) steps; no extra step at the end, quirk 8 fixed)."""
    if isinstance(spec, str) and spec.startswith("epoch:"):
        name = spec.split(":", 1)[1]
        names = [s.name for s in getattr(data, "sources", [])]
        if name not in names:
            raise ValueError(f"max_train_steps={spec}: no data source named {name!r} (have {names})")
        i = names.index(name)
        return max(1, data.samplers[i].per_rank // data.sources[i].batch_size)
    return int(spec)


def _tokenizer(cfg: DictConfig):
    """(vocab size, tokenizer, SpecialTokens) of the run; synthetic data has no tokenizer."""
    if cfg.data.source == "synthetic":
        return int(cfg.data.synthetic.get("vocab_size", 512)), None, None
    tok = cfg.data.get("tokenizer")
    if tok:
        from datasets.tokenizer import load_tokenizer

        tokenizer, special = load_tokenizer(str(tok))
        return len(tokenizer), tokenizer, special
    return None, None, None


# ================================================================================================
# flow matching on the training side


@torch.no_grad()
def flow_inputs(batch: Mapping[str, Any], vae, gen: torch.Generator, cfg: DictConfig, device: torch.device,
                patch_size: int = 2) -> dict:
    """Model inputs for one mixed micro-batch (spec §9): x1 (VAE sample), t, x_t, u, masks.
    ``patch_size``: the model's (it sets the token count of the resolution-dependent time shift).

    * generation items: t ~ logit-normal shifted for their token count, x_t = t x1 + (1-t) x0;
    * clean items (understanding, padding dummies: ``t_min`` = 1): t = 1, x_t = x1, no flow loss;
    * interleaved rows: with prob ``interleaved_clean_prefix_prob`` a random prefix of the images is
      clean context (t = 1, flow mask removed; the last image is always generated; §9.7);
    * i2v items: their first ``cond_frames`` latent frames are set clean (the sequence builder
      already removed their tokens from the flow mask).
    """
    fl = cfg.flow
    input_ids = batch["input_ids"].to(device)
    image_masks = batch["image_masks"].to(device).clone()
    positions = batch["modality_positions"].to(device)
    out = {"input_ids": input_ids, "text_labels": batch["labels"].to(device), "modality_positions": positions}
    if "pixels" in batch:
        x1 = vae.encode(batch["pixels"].to(device), sample=bool(fl.get("vae_sample", True)), generator=gen)
    elif "latent_mean" in batch:  # cached posterior: draw the per-step sample here (quirk 25 kept)
        from models.vae import sample_from_posterior

        x1 = sample_from_posterior(batch["latent_mean"].to(device), batch["latent_logvar"].to(device), gen)
    elif "latents" in batch:
        x1 = batch["latents"].to(device).float()
    else:  # text-only batch
        out["image_masks"] = image_masks
        return out
    n = x1.shape[0]
    t_min = batch.get("t_min")
    t_min = torch.zeros(n) if t_min is None else t_min.float().cpu().clone()
    b, m = positions.shape[:2]
    # interleaved clean-prefix rule (per row, drawn on the run's generator)
    p_prefix = float(fl.get("interleaved_clean_prefix_prob", 0.7))
    for i, dt in enumerate(batch.get("data_type", [])):
        if dt != "interleaved_data":
            continue
        real = int((positions[i, :, 1] > 0).sum())
        draw = float(torch.rand((), generator=gen))
        if real > 1 and draw < p_prefix:
            k = int(torch.randint(1, real, (1,), generator=gen))  # k in {1, ..., j*}
            for j in range(k):
                t_min[i * m + j] = 1.0
    seq_len = VisualInfo.for_latents(x1.shape[1:], patch_size).block_len if fl.get("resolution_shift", True) else None
    fixed = fl.get("train_shift")
    t = sample_train_timesteps(n, seq_len, t_min=t_min, generator=gen, shift=None if fixed is None else float(fixed))
    t = torch.where(t_min >= 1.0, torch.ones_like(t), t)  # exactly clean
    x0 = torch.randn(x1.shape, generator=gen, dtype=torch.float32).to(device)
    t_dev = t.to(device)
    xt = interpolate(x0, x1, t_dev)
    u = velocity_target(x0, x1)
    # i2v conditioning frames are clean
    cond = batch.get("cond_frames")
    if cond is None:  # derive from the per-row VisualInfo lists
        cond = torch.zeros(n, dtype=torch.long)
        for i, row in enumerate(batch.get("visuals", [])):
            for j, info in enumerate(row):
                cond[i * m + j] = int(getattr(info, "cond_frames", 0) or 0)
    if x1.ndim == 5:
        for idx in torch.nonzero(cond > 0).flatten().tolist():
            cf = int(cond[idx])
            xt[idx, :, :cf] = x1[idx, :, :cf]
    # clean items carry no flow loss (also guards loaders that emit official all-ones masks)
    for idx in torch.nonzero(t_min >= 1.0).flatten().tolist():
        i, j = divmod(idx, m)
        off, length = positions[i, j].tolist()
        if length > 0:
            image_masks[i, off : off + length] = 0
    out.update(image_latents=xt, t=t_dev, image_labels=u, image_masks=image_masks)
    return out


# ================================================================================================
# the loop


def _all_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
    """Mean / min over ranks with torch.distributed directly (accelerate's reduce is a no-op when its
    distributed type is overridden, e.g. the CPU FSDP path)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    return t / dist.get_world_size() if op == "mean" else t


def _clip_and_norm(accelerator, model, clip: float) -> float:
    """Clip to ``clip`` (0: no clipping) and return the global grad norm before clipping, on every backend.

    DeepSpeed clips inside its engine step (``gradient_clipping`` from the run config) and reports the
    norm itself; elsewhere ``clip_grad_norm_`` (with an infinite bound when not clipping) gives it.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        norm = model.get_global_grad_norm()  # of the step the engine just took in backward()
        return float(norm) if norm is not None else float("nan")
    params = [p for p in model.parameters() if p.requires_grad]
    norm = accelerator.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    return float(norm) if norm is not None else float("nan")


def _model_loss(model, inputs: dict, cfg: DictConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out = model(**inputs, compute_logits=False)  # the NTP loss forms logits only at supervised positions
    zero = torch.zeros((), device=inputs["input_ids"].device)
    ntp = out.loss_ntp if out.loss_ntp is not None else zero
    flow = out.loss_flow if out.loss_flow is not None else zero
    loss = float(cfg.training.ntp_coeff) * ntp + float(cfg.training.flow_coeff) * flow
    return loss, ntp.detach(), flow.detach()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run a training stage to ``training.max_train_steps``; returns a small summary dict."""
    exp, tr = cfg.experiment, cfg.training
    accelerator = setup_accelerator(cfg)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    out_dir = Path(exp.output_dir)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    accelerator.wait_for_everyone()

    # Per-rank streams (seed + rank) unless reproducing the official same-seed quirk 9.
    seed = int(tr.seed) + (0 if tr.get("same_seed_all_ranks", False) else rank)
    from accelerate.utils import set_seed

    set_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # t, x0 and VAE-posterior noise: drawn on CPU, device-independent

    resume_path = ckpt.resolve_checkpoint(exp.get("resume_from_checkpoint"), out_dir)
    start_step = int(resume_path.name.split("-")[1]) if resume_path else 0
    logger = RunLogger(out_dir, cfg.get("logging", {}), is_main=accelerator.is_main_process, run_config=to_plain(cfg),
                       total_steps=None, initial_step=start_step, run_name=str(exp.name), project=str(exp.get("project", "showo2")))
    log = logger.info

    vocab, tokenizer, special = _tokenizer(cfg)
    model = build_model(cfg, vocab, log=log)
    frozen = freeze_params(model, list(cfg.model.get("frozen_params") or []))
    counts = trainable_summary(model)
    log(f"model: {counts['trainable']:,} trainable / {counts['frozen']:,} frozen parameters ({len(frozen)} frozen tensors)")
    vae = build_vae(cfg, device)
    patch = int(model.config.patch_size)
    data = build_data(cfg, vocab or 0, rank, world, int(tr.seed), patch)  # one permutation for all ranks, then sharded
    max_steps = resolve_max_steps(tr.max_train_steps, data)
    logger.set_total(max_steps)
    log(f"max_train_steps = {max_steps}")
    optimizer = build_optimizer(model, to_plain(cfg.optimizer))
    scheduler = build_scheduler(optimizer, to_plain(cfg.lr_scheduler), max_steps)
    # The scheduler is stepped by us once per optimizer step (not passed to prepare: accelerate would
    # step it num_processes times per call).
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    guard = NonFiniteGuard(int(tr.get("max_nonfinite_steps", 10)))
    step = 0
    if resume_path is not None:
        meta = ckpt.load_checkpoint(accelerator, resume_path, model, optimizer, scheduler, generators={"flow": gen})
        data.load_state_dict(meta["data_state"])
        step = int(meta["global_step"])
        guard.total = int(meta["state"].get("nonfinite_total", 0))
        log(f"resumed from {resume_path} at step {step}")
    elif exp.get("init_from"):
        log("fresh optimizer / schedule / step (init_from is a weights-only hand-off)")

    ga = int(tr.get("gradient_accumulation_steps", 1))
    clip = float(tr.get("max_grad_norm") or 0.0)
    log_every = int(cfg.get("logging", {}).get("log_every", 1))
    save_every = int(exp.get("save_every") or 0)
    gen_every = int(exp.get("generate_every") or 0)
    keep_last = exp.get("keep_last")
    step_times: list[float] = []
    grad_norm = float("nan")
    sums = torch.zeros(3, device=device)  # loss, ntp, flow over the log window
    window = 0
    last_log = time.perf_counter()

    while step < max_steps:
        t0 = time.perf_counter()
        rows = 0
        skipped = False
        step_sums = torch.zeros(3, device=device)
        for _ in range(ga):
            batch = next(data)  # consumed even when skipping, so the data position stays deterministic
            rows += int(batch["input_ids"].shape[0])
            with accelerator.accumulate(model):  # entered every micro-step: keeps accelerate's GA counter aligned
                if skipped:
                    continue
                inputs = flow_inputs(batch, vae, gen, cfg, device, patch)
                loss, ntp, flow = _model_loss(model, inputs, cfg)
                finite = torch.isfinite(loss.detach()).float().reshape(1)
                if not guard.update(bool(_all_reduce(finite, "min").item() > 0)):  # all ranks agree to skip
                    skipped = True
                    log(f"step {step + 1}: non-finite loss ({guard.in_a_row} in a row): step skipped")
                    optimizer.zero_grad(set_to_none=True)
                    continue
                accelerator.backward(loss)  # accelerate divides by the accumulation steps itself
                if accelerator.sync_gradients:
                    grad_norm = _clip_and_norm(accelerator, model, clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_sums += torch.stack([loss.detach(), ntp, flow]) / ga
        if skipped:
            continue  # the step does not count; training goes on with the next batches
        sums += step_sums
        scheduler.step()
        step += 1
        window += 1
        step_times.append(time.perf_counter() - t0)
        logger.advance(1)

        if step % log_every == 0 or step == max_steps:
            avg = _all_reduce(sums / window, "mean").tolist()
            now = time.perf_counter()
            rec = {"loss": avg[0], "loss_ntp": avg[1], "loss_flow": avg[2], **group_lrs(optimizer),
                   "samples_per_s": rows * world * window / max(now - last_log, 1e-9),
                   "step_time_s": step_times[-1], "grad_norm": float(grad_norm), "nonfinite_total": guard.total}
            rec.update(_bad_sample_counts(data))
            logger.log(step, rec)
            sums.zero_()
            window = 0
            last_log = now
        if save_every and step % save_every == 0 and step < max_steps:
            _save(accelerator, out_dir, step, model, optimizer, scheduler, gen, data, guard, keep_last, log)
        if gen_every and step % gen_every == 0:
            _sample_grid(accelerator, model, vae, (tokenizer, special), cfg, step, out_dir, logger)

    # final: a resumable checkpoint (unless one for this step exists) + the export inference loads
    if exp.get("save_final", True) and not (out_dir / f"checkpoint-{step}").exists():
        _save(accelerator, out_dir, step, model, optimizer, scheduler, gen, data, guard, keep_last, log)
    ckpt.export_model(accelerator, model, out_dir / "export")
    mem = peak_memory()
    st = sorted(step_times[1:] or step_times or [float("nan")])
    summary = {"steps": step, "median_step_time_s": st[len(st) // 2], **mem}
    log(f"done: {summary}")
    if accelerator.is_main_process:
        import json

        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    logger.close()
    accelerator.end_training()
    return summary


def _bad_sample_counts(data) -> dict[str, int]:
    fn = getattr(data, "bad_sample_counts", None)
    if fn is None:
        return {}
    return {f"bad_samples/{k}": int(v) for k, v in dict(fn()).items()}


def _save(accelerator, out_dir, step, model, optimizer, scheduler, gen, data, guard, keep_last, log) -> None:
    path = ckpt.save_checkpoint(
        accelerator, out_dir, step, model, optimizer, scheduler, generators={"flow": gen},
        data_state=data.state_dict(), run_state={"nonfinite_total": guard.total},
        keep_last=int(keep_last) if keep_last else None,
    )
    log(f"saved {path}")


def _sample_grid(accelerator, model, vae, tok, cfg, step, out_dir, logger) -> None:
    """Periodic T2I samples to ``<output_dir>/samples/step-N.png`` via the inference pipeline (main
    process; needs a tokenizer, so not for synthetic data). Runs under ``fork_rng`` so sampling never
    perturbs the training random streams (exact resume); a failure is logged, never fatal."""
    from accelerate.utils import DistributedType

    tokenizer, special = tok
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        logger.info(f"step {step}: sample grid skipped (sharded model: sample from the export instead)")
        return
    if accelerator.is_main_process:
        try:
            from generation.pipeline import Showo2Pipeline
        except ImportError:
            Showo2Pipeline = None
        if Showo2Pipeline is None or tokenizer is None or vae is None:
            logger.info(f"step {step}: sample grid skipped (needs generation.pipeline, a tokenizer and a VAE)")
        else:
            g = cfg.get("generation", {})
            prompts = list(g.get("prompts") or ["a red circle"])
            unwrapped = accelerator.unwrap_model(model)
            try:
                with torch.random.fork_rng(devices=[]), torch.no_grad():
                    pipe = Showo2Pipeline(unwrapped, vae, tokenizer, special, resolution=int(cfg.data.get("resolution", 432)))
                    images = pipe.text_to_image(prompts, guidance_scale=float(g.get("guidance_scale", 5.0)),
                                                num_steps=int(g.get("num_steps", 50)),
                                                seeds=[int(g.get("seed", 0)) + i for i in range(len(prompts))], progress=False)
                import numpy as np

                path = save_image_grid(np.stack([np.asarray(im.convert("RGB")) for im in images]),
                                       Path(out_dir) / "samples" / f"step-{step:07d}.png")
                logger.log_images(step, path, caption=" | ".join(prompts))
                logger.info(f"step {step}: samples -> {path}")
            except Exception as e:  # sampling must never kill a training run
                logger.info(f"step {step}: sample grid failed: {type(e).__name__}: {e}")
            finally:
                unwrapped.train()
    accelerator.wait_for_everyone()
