"""A model patch size other than the official 2 reaches every place that lays out visual tokens:
the sequence builder, the data loaders (pixels and cached latents), the training flow inputs and the
inference pipeline."""

from __future__ import annotations

import random

import pytest
import torch
from omegaconf import OmegaConf

from datasets import shapes
from datasets.sequence import SequenceBuilder

RES = 64


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    from datasets.tokenizer import build_demo_tokenizer, load_tokenizer

    root = tmp_path_factory.mktemp("patch")
    paths = shapes.write_shapes_world(root / "w", n_train=8, n_eval=2, n_videos=0, n_stories=0, resolution=RES,
                                      grid=2, video_format="frames")
    captions = [shapes.sample_spec(random.Random(i)).caption() for i in range(100)]
    tok_dir = build_demo_tokenizer(captions + ["How many shapes are there?", "two"], root / "tok", 300)
    tokenizer, sp = load_tokenizer(tok_dir)
    return paths, tokenizer, sp, tok_dir


@pytest.mark.parametrize("patch", [2, 4])
def test_builder_token_grids(patch: int) -> None:
    from training.synthetic import synthetic_special_tokens

    b = SequenceBuilder(synthetic_special_tokens(512), patch_size=patch)
    img = b.visual_for_latents(torch.zeros(16, 8, 8))
    assert (img.kind, img.grid, img.num_tokens) == ("image", (8 // patch, 8 // patch), (8 // patch) ** 2)
    vid = b.visual_for_latents(torch.zeros(16, 2, 8, 8), generate=False)
    assert (vid.kind, vid.latent_frames, vid.num_tokens, vid.generate) == ("video", 2, 2 * (8 // patch) ** 2, False)
    px = b.visual_for_pixels(RES, frames=5)   # 5 frames -> 2 latent frames; 64 px -> 8x8 latents
    assert (px.latent_frames, px.num_tokens) == (2, 2 * (8 // patch) ** 2)
    assert b.visual_for_pixels(RES).num_tokens == img.num_tokens
    # the latent-side block length (time shift, distillation) agrees with the layout's blocks
    from datasets.sequence import VisualInfo, visual_block_len

    assert VisualInfo.for_latents((16, 8, 8), patch).block_len == img.block_len == visual_block_len(RES, RES, patch=patch)
    assert VisualInfo.for_latents((16, 2, 8, 8), patch).block_len == vid.block_len == 2 * (8 // patch) ** 2 + 1


@pytest.mark.parametrize("patch", [2, 4])
def test_loaders_lay_out_the_models_token_count(world, patch: int) -> None:
    from datasets.image_text import ImageTextDataset
    from datasets.instruct import InstructDataset

    paths, tokenizer, sp, _ = world
    b = SequenceBuilder(sp, tokenizer=tokenizer, max_seq_len=160, patch_size=patch)
    n = (RES // 8 // patch) ** 2
    t2i = ImageTextDataset(paths["image_text"], b, task="t2i", resolution=RES, cond_dropout_prob=0.0)[0]
    und = InstructDataset(paths["llava_train"], paths["image_root"], b, resolution=RES)[0]
    for item in (t2i, und):
        seq = item["sequence"]
        assert seq.visuals[0].num_tokens == n and seq.visuals[0].grid == (8 // patch, 8 // patch)
        v = seq.visuals[0]
        block = seq.input_ids[v.offset + 1: v.offset + 1 + n]   # the n visual slots after the time token
        assert len(set(block.tolist())) == 1 and seq.input_ids[v.offset + 1 + n] != block[0]
    assert int(t2i["sequence"].image_masks.sum()) == n + 1      # flow loss on the time token + n tokens


def test_train_step_and_pipeline_with_patch_4(world) -> None:
    """Real loader -> flow inputs -> loss -> backward with a 4x4-patch model; then the pipeline generates
    and answers with it (64 px: 2x2 visual tokens)."""
    from datasets.mixed import build_mixed_loader
    from generation.pipeline import Showo2Pipeline
    from models.config import Showo2Config
    from models.showo2 import Showo2Model
    from models.vae import WanVAE
    from training.loop import _model_loss, flow_inputs

    paths, tokenizer, sp, tok_dir = world
    torch.manual_seed(0)
    model = Showo2Model(Showo2Config.preset("demo", patch_size=4, llm_vocab_size=len(tokenizer),
                                            qwen2={**Showo2Config.preset("demo").qwen2, "vocab_size": len(tokenizer)}))
    vae = WanVAE.from_config(seed=0)
    data = build_mixed_loader({"tokenizer": str(tok_dir), "max_seq_len": 160, "resolution": RES, "sources": [
        {"name": "t2i", "type": "image_text", "path": paths["image_text"], "task": "t2i", "batch_size": 2},
        {"name": "und", "type": "instruct", "path": paths["llava_train"], "root": paths["image_root"],
         "mode": "tuning", "batch_size": 2}]}, patch_size=4)
    cfg = OmegaConf.create({"flow": {"resolution_shift": True, "vae_sample": True},
                            "training": {"ntp_coeff": 1.0, "flow_coeff": 1.0}})
    batch = next(data)
    inputs = flow_inputs(batch, vae, torch.Generator().manual_seed(0), cfg, torch.device("cpu"), patch_size=4)
    assert inputs["image_latents"].shape[-2:] == (8, 8)
    assert int(batch["image_masks"][0].sum()) == 4 + 1        # a t2i row: time token + 2x2 visual tokens
    loss, ntp, flow = _model_loss(model, inputs, cfg)
    assert torch.isfinite(loss) and ntp > 0 and flow > 0
    loss.backward()
    assert model.diffusion_head_b.linear.weight.grad.shape[0] == 4 * 4 * 16  # velocity of one 4x4 latent patch

    pipe = Showo2Pipeline(model.eval(), vae, tokenizer, sp, resolution=RES)
    images = pipe.text_to_image(["a red circle", "two squares"], num_steps=3, guidance_scale=2.0, progress=False)
    assert [im.size for im in images] == [(RES, RES)] * 2
    answers = pipe.understand([images[0]], ["How many shapes are there?"], max_new_tokens=2)
    assert len(answers) == 1 and isinstance(answers[0], str)

