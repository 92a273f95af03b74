"""LVLM: counted splice, patch-position vectors, losses."""

import pytest
import torch

from seedx_agent.config import SeedXConfig
from seedx_agent.errors import ImageTokenMismatchError
from seedx_agent.pipeline.lvlm import SeedXLVLM, scatter_image_embeds


@pytest.fixture(scope="module")
def lvlm():
    config = SeedXConfig.from_preset("tiny-random")
    torch.manual_seed(0)
    return SeedXLVLM(config.llm, config.lvlm)


def test_splice_replaces_in_row_major_order():
    embeds = torch.zeros(2, 5, 3)
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    feats = torch.arange(12, dtype=torch.float).reshape(2, 2, 3)  # 2 crops x 2 tokens
    out = scatter_image_embeds(embeds, mask, feats)
    assert torch.equal(out[0, 1], feats[0, 0]) and torch.equal(out[0, 2], feats[0, 1])
    assert torch.equal(out[1, 3], feats[1, 0]) and torch.equal(out[1, 4], feats[1, 1])
    assert out[0, 0].abs().sum() == 0 and embeds.abs().sum() == 0  # input untouched


def test_splice_mismatch_states_both_counts():
    with pytest.raises(ImageTokenMismatchError, match="3 image placeholder positions but 4 image feature"):
        scatter_image_embeds(torch.zeros(1, 4, 2), torch.tensor([[1, 1, 1, 0]], dtype=torch.bool), torch.zeros(2, 2, 2))
    with pytest.raises(ImageTokenMismatchError, match="2 image placeholder positions but 0"):
        scatter_image_embeds(torch.zeros(1, 4, 2), torch.tensor([[1, 1, 0, 0]], dtype=torch.bool), None)


def test_patch_position_formula(lvlm):
    pos = torch.tensor([[0.25, 0.5], [0.5, 0.5]])
    got = lvlm.patch_position_vectors(pos)
    table = lvlm.patch_pos_embed
    want0 = 0.5 * (0.25 * table[0] + 0.5 * table[1] + 0.75 * table[2] + 0.5 * table[3])
    torch.testing.assert_close(got[0], want0)
    torch.testing.assert_close(got[1], table.mean(dim=0))  # thumbnail: mean of the four rows


def test_embed_images_adds_one_vector_per_crop(lvlm):
    feats = torch.randn(3, 16, 48)
    pos = torch.tensor([[0.25, 0.5], [0.75, 0.5], [0.5, 0.5]])
    out = lvlm.embed_images(feats, pos)
    assert out.shape == (3, 4, 64)
    base = lvlm.input_resampler(feats)
    torch.testing.assert_close(out - base, lvlm.patch_position_vectors(pos)[:, None, :].expand_as(out))


def test_losses_combine_lm_and_6x_mse(lvlm):
    n = lvlm.config.num_image_tokens
    ids = torch.randint(3, 500, (2, 12))
    gen_mask = torch.zeros(2, 12, dtype=torch.bool)
    gen_mask[0, 2 : 2 + n] = True
    labels = ids.clone()
    labels[gen_mask] = -100
    target = torch.randn(1, 4 * n, 48)
    out = lvlm(ids, labels=labels, ids_gen_mask=gen_mask, target_vit_features=target)
    assert out.regressed_features.shape == (1, n, 48)
    torch.testing.assert_close(out.loss, out.lm_loss + 6.0 * out.rec_loss)
    pooled = target.reshape(1, n, 4, 48).mean(dim=2)
    torch.testing.assert_close(out.rec_loss, torch.nn.functional.mse_loss(out.regressed_features, pooled))
    out.loss.backward()
    assert lvlm.output_resampler.query.grad is not None
