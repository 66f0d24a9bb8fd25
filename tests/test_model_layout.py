"""Masks, index-tensor placement and velocity layout against straightforward reference loops."""
from __future__ import annotations

import pytest
import torch

from models.attention import additive_mask, flex_block_mask, omni_attention_mask
from models.config import Showo2Config
from models.flow_head import place_modulation
from models.layout import build_layout, gather_slots
from models.losses import flow_loss, ntp_loss, tokens_to_velocity, velocity_to_tokens
from models.showo2 import Showo2Model

# several slots per row: overlapping (later wins), duplicated, padding (0, 0), one slot ending at L
SLOTS = torch.tensor([
    [[2, 5], [10, 5], [0, 0]],
    [[1, 5], [3, 5], [16, 4]],
    [[0, 0], [0, 0], [7, 5]],
])
L = 20




def brute_mask(mp: torch.Tensor, q_len: int, kv_len: int, q_offset: int) -> torch.Tensor:
    b = mp.shape[0]
    out = torch.zeros(b, 1, q_len, kv_len, dtype=torch.bool)
    for i in range(b):
        for qi in range(q_len):
            q = qi + q_offset
            for k in range(kv_len):
                ok = k <= q
                for o, ln in mp[i].tolist():
                    ok = ok or (o <= q < o + ln and o <= k < o + ln)
                out[i, 0, qi, k] = ok
    return out


@pytest.mark.parametrize("q_offset,q_len", [(0, L), (6, 8), (12, 8), (19, 1)])
def test_omni_mask_brute_force(q_offset, q_len):
    got = omni_attention_mask(SLOTS, q_len, q_offset + q_len, q_offset)
    assert torch.equal(got, brute_mask(SLOTS, q_len, q_offset + q_len, q_offset))


def test_omni_mask_causal_without_slots_and_additive():
    m = omni_attention_mask(None, 4, batch_size=2)
    assert m.shape == (2, 1, 4, 4) and torch.equal(m[0, 0], torch.ones(4, 4).tril().bool())
    a = additive_mask(m, torch.float32)
    assert (a[m] == 0).all() and (a[~m] == torch.finfo(torch.float32).min).all()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_block_mask_matches_dense():
    from torch.nn.attention.flex_attention import flex_attention

    torch.manual_seed(0)
    q_offset, q_len = 4, 16
    kv_len = q_offset + q_len
    bm = flex_block_mask(SLOTS, q_len, kv_len, q_offset, device="cpu")
    q = torch.randn(3, 2, q_len, 8)
    k, v = torch.randn(3, 2, kv_len, 8), torch.randn(3, 2, kv_len, 8)
    dense = omni_attention_mask(SLOTS, q_len, kv_len, q_offset)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    got = flex_attention(q, k, v, block_mask=bm)
    assert torch.allclose(got, ref, atol=1e-5)


def loop_scatter(embeds, mp, time_tok, visual, quirk: bool):
    """The reference's sequential writer: slot by slot, row-major."""
    e = embeds.clone()
    b, m = mp.shape[:2]
    for i in range(b):
        for j in range(m):
            o, ln = mp[i, j].tolist()
            item = i * m + j
            if ln == 0 and not quirk:
                continue
            e[i, o] = time_tok[item]
            for k in range(ln - 1):
                e[i, o + 1 + k] = visual[item, k]
    return e


def loop_modulation(params, mp, b, seq, defaults):
    out = defaults.expand(b, seq, -1).clone()
    m = mp.shape[1]
    for i in range(b):
        for j in range(m):
            o, ln = mp[i, j].tolist()
            for p in range(o, o + ln):
                out[i, p] = params[i * m + j]
    return out


@pytest.mark.parametrize("quirk", [False, True])
def test_vectorised_scatter_equals_loop(quirk):
    torch.manual_seed(0)
    b, m = SLOTS.shape[:2]
    n_items, h = b * m, 6
    embeds = torch.randn(b, L, h)
    time_tok = torch.randn(n_items, h)
    visual = torch.randn(n_items, 4, h)
    layout = build_layout(SLOTS, L, 0, bos_overwrite_quirk=quirk)
    table = torch.cat([time_tok[:, None], visual], 1)
    placed = gather_slots(table, layout.emb_item, layout.emb_local)
    got = torch.where((layout.emb_item >= 0)[..., None], placed, embeds)
    assert torch.equal(got, loop_scatter(embeds, SLOTS, time_tok, visual, quirk))
    # adaLN placement (zero-length slots modulate nothing, quirk or not)
    params = torch.randn(n_items, 12)
    defaults = torch.randn(12)
    got_mod = place_modulation(params, layout.mod_index, defaults)
    assert torch.equal(got_mod, loop_modulation(params, SLOTS, b, L, defaults))


def test_scatter_chunk_offset_matches_full():
    torch.manual_seed(1)
    b, m = SLOTS.shape[:2]
    table = torch.randn(b * m, 5, 3)
    full = build_layout(SLOTS, L, 0)
    part = build_layout(SLOTS, 8, 12)
    assert torch.equal(part.item, full.item[:, 12:]) and torch.equal(part.local, full.local[:, 12:])
    assert torch.equal(gather_slots(table, part.item, part.local), gather_slots(table, full.item, full.local)[:, 12:])


def test_block_longer_than_item_raises():
    layout = build_layout(torch.tensor([[[0, 6]]]), 6)
    with pytest.raises(ValueError, match="longer than its item"):
        gather_slots(torch.zeros(1, 4, 2), layout.item, layout.local)


@pytest.mark.parametrize("shape", [(3, 16, 8, 8), (2, 16, 3, 8, 12)])
def test_velocity_token_layout(shape):
    torch.manual_seed(0)
    u = torch.randn(shape)
    tok = velocity_to_tokens(u, 2)
    c = shape[1]
    n = u[0].numel() // c // 4
    assert tok.shape == (shape[0], n, 4 * c)
    assert torch.equal(tokens_to_velocity(tok, shape[1:], 2), u)
    # index form of spec §4.6: V[c, s // w, s % w] = v[k, (a*p + b)*C + c], s = 4k + 2a + b (per frame)
    flat = u.reshape(shape[0], c, -1)
    for k in (0, 1, n - 1):
        for a in range(2):
            for b_ in range(2):
                s = 4 * k + 2 * a + b_
                assert torch.equal(tok[:, k, (a * 2 + b_) * c:(a * 2 + b_ + 1) * c], flat[:, :, s])


def test_losses_edge_cases():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.full((2, 5), -100)
    z = ntp_loss(logits, labels)
    assert z.item() == 0.0 and z.requires_grad
    assert torch.isnan(ntp_loss(logits, labels, nan_if_empty=True))
    labels[0, 2] = 3
    ref = torch.nn.functional.cross_entropy(logits[0, 1][None], torch.tensor([3]))
    assert torch.allclose(ntp_loss(logits, labels), ref)
    v, lab = torch.randn(2, 5, 4, requires_grad=True), torch.randn(2, 5, 4)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    assert flow_loss(v, lab, mask).item() == 0.0
    mask[1, 3] = True
    assert torch.allclose(flow_loss(v, lab, mask), ((v[1, 3] - lab[1, 3]) ** 2).mean())


@torch.no_grad()
def test_multi_slot_forward_runs_and_extracts():
    """Two images per row plus a padding slot; extract_velocity returns the non-empty slots row-major."""
    torch.manual_seed(0)
    model = Showo2Model(Showo2Config.preset("tiny")).eval()
    mp = torch.tensor([[[1, 17], [19, 17]], [[2, 17], [0, 0]]])
    lat = torch.randn(4, 16, 8, 8)
    out = model(torch.randint(0, 480, (2, 40)), image_latents=lat, t=torch.rand(4), modality_positions=mp)
    v = model.extract_velocity(out.v_tokens, mp, (16, 8, 8))
    assert v.shape == (3, 16, 8, 8)
    assert torch.equal(v[2], tokens_to_velocity(out.v_tokens[1, 3:19], (16, 8, 8), 2))


@torch.no_grad()
def test_video_understanding_pooling():
    """Per-frame 4x4 token grids pooled to 2x2: F*4 tokens, frame-major, equal to pooling each frame alone."""
    torch.manual_seed(0)
    model = Showo2Model(Showo2Config.preset("tiny")).eval()
    vid = torch.randn(1, 16, 3, 8, 8)
    pooled = model.encode_visual(vid, pool_to=(2, 2))
    assert pooled.shape == (1, 12, 48)
    frame1 = model.encode_visual(vid[:, :, 1], pool_to=(2, 2))
    assert torch.allclose(pooled[:, 4:8], frame1, atol=1e-6)
    mp = torch.tensor([[[2, 13]]])
    out = model(torch.randint(0, 480, (1, 20)), image_latents=vid, t=torch.ones(1), modality_positions=mp,
                visual_pool=(2, 2), compute_flow=False)
    assert out.logits.shape == (1, 20, 512)


@torch.no_grad()
def test_padding_slot_items_are_not_encoded():
    """Dummy latents of (0, 0) slots never influence outputs (they are skipped, not just overwritten)."""
    torch.manual_seed(0)
    model = Showo2Model(Showo2Config.preset("tiny")).eval()
    mp = torch.tensor([[[1, 17], [0, 0]], [[2, 17], [0, 0]]])
    ids = torch.randint(0, 480, (2, 24))
    lat = torch.randn(4, 16, 8, 8)
    lat2 = lat.clone()
    lat2[1] = 1e6   # a dummy item: would blow up any output it reached
    b = model(ids, image_latents=lat2, t=torch.full((4,), 0.5), modality_positions=mp)
    c = model(ids, image_latents=lat, t=torch.full((4,), 0.5), modality_positions=mp)
    assert torch.equal(b.v_tokens, c.v_tokens) and torch.equal(b.logits, c.logits)


@torch.no_grad()
def test_bos_overwrite_quirk_forward():
    """Q9: with the flag, a (0, 0) slot writes its item's time token over position 0 of its row."""
    torch.manual_seed(0)
    on = Showo2Model(Showo2Config.preset("tiny", bos_overwrite_quirk=True)).eval()
    off = Showo2Model(Showo2Config.preset("tiny")).eval()
    off.load_state_dict(on.state_dict())
    mp = torch.tensor([[[1, 17], [0, 0]], [[2, 17], [0, 0]]])
    ids = torch.randint(0, 480, (2, 24))
    lat, t = torch.randn(4, 16, 8, 8), torch.rand(4)
    a = on(ids, image_latents=lat, t=t, modality_positions=mp)
    emb = off.showo.model.embed_tokens(ids)
    _, tok = off.embed_time(t)
    emb[:, 0] = tok[[1, 3]]   # the padding items of rows 0 and 1
    b = off(inputs_embeds=emb, image_latents=lat, t=t, modality_positions=mp)
    assert torch.allclose(a.logits, b.logits, atol=1e-6) and torch.allclose(a.v_tokens, b.v_tokens, atol=1e-6)
    assert not torch.allclose(a.logits, off(ids, image_latents=lat, t=t, modality_positions=mp).logits)


def test_forward_rejects_a_block_longer_than_its_item_on_the_host():
    """The model checks CPU-resident slots on the host (no device sync per step) with the same clear error."""
    from models.layout import check_block_lengths

    assert check_block_lengths(torch.tensor([[[2, 17]]]), 16)
    with pytest.raises(ValueError, match="longer than its item"):
        check_block_lengths(torch.tensor([[[2, 18]]]), 16)
    m = Showo2Model(Showo2Config.preset("tiny")).eval()
    ids = torch.full((1, 24), 498)
    with torch.no_grad(), pytest.raises(ValueError, match="longer than its item"):
        m(ids, image_latents=torch.randn(1, 16, 8, 8), t=torch.ones(1), modality_positions=torch.tensor([[[2, 20]]]))
