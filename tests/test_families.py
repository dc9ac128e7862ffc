"""Every family users bring: Hugging Face transformers, torchvision, open_clip, timm's
class-attention models, and custom ViTs; each against an explicit float64 reference."""

import copy

import pytest
import timm
import torch
import torchvision
import transformers
from reference import relative_error
from reference_families import explicit_maps, perturb

from vitflow import DAAM, Adapter, FeatureWeightTarget, ProjectionSite, SimilarityTarget

SMALL = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96, image_size=32,
             patch_size=8)  # fmt: skip


def logit_of(target):
    def score(output):
        logits = output.logits if hasattr(output, "logits") else output
        return logits[torch.arange(logits.shape[0]), target]

    return score


HF_CLASSIFIERS = {
    "ViTForImageClassification": (transformers.ViTConfig, {}, 1),
    "DeiTForImageClassification": (transformers.DeiTConfig, {}, 2),
    "DeiTForImageClassificationWithTeacher": (transformers.DeiTConfig, {}, 2),
    "Dinov2ForImageClassification": (transformers.Dinov2Config, {}, 1),
}


@pytest.mark.filterwarnings("ignore:Dinov2ForImageClassification")
@pytest.mark.parametrize("name", list(HF_CLASSIFIERS))
def test_hf_classifiers_match_explicit_reference_with_sdpa_left_on(name):
    config_cls, extra, prefix = HF_CLASSIFIERS[name]
    torch.manual_seed(0)
    model = perturb(getattr(transformers, name)(config_cls(**SMALL, **extra, num_labels=6))).double()
    assert model.config._attn_implementation == "sdpa"
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    state = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        before = model(x).logits
    with DAAM(model) as daam:
        result = daam(x, target=[0, 3, 5])
        singles = [daam(x[i : i + 1], target=t) for i, t in enumerate([0, 3, 5])]
    assert result.prefix_tokens == prefix and result.grid == (4, 4)
    ref = explicit_maps(model, x, "hf", prefix, (4, 4), logit_of(torch.tensor([0, 3, 5])))
    assert ref.abs().max() > 0
    assert relative_error(result.block_maps, ref) <= 1e-5
    for i, single in enumerate(singles):
        assert relative_error(single.block_maps[0], result.block_maps[i]) <= 1e-10
    assert model.config._attn_implementation == "sdpa"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


HF_BACKBONES = {
    "Dinov2Model": (transformers.Dinov2Config, {}, 1, 48),
    "Dinov2WithRegistersModel": (transformers.Dinov2WithRegistersConfig, {"num_register_tokens": 4}, 5, 48),
    "CLIPVisionModel": (transformers.CLIPVisionConfig, {}, 1, 48),
    "CLIPVisionModelWithProjection": (transformers.CLIPVisionConfig, {"projection_dim": 16}, 1, 16),
}


@pytest.mark.parametrize("name", list(HF_BACKBONES))
def test_hf_backbones_explain_feature_targets_exactly(name):
    config_cls, extra, prefix, dim = HF_BACKBONES[name]
    torch.manual_seed(1)
    model = perturb(getattr(transformers, name)(config_cls(**SMALL, **extra))).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    w = torch.randn(dim, dtype=torch.float64)
    with DAAM(model) as daam:
        result = daam(x, target=FeatureWeightTarget(w))
        with pytest.raises(ValueError, match="no classifier head"):
            daam(x)

    def score(output):
        features = output.image_embeds if hasattr(output, "image_embeds") else output.pooler_output
        return features @ w

    ref = explicit_maps(model, x, "hf", prefix, (4, 4), score, rho="identity")
    assert result.prefix_tokens == prefix
    assert ref.abs().max() > 0 and relative_error(result.block_maps, ref) <= 1e-5


def _torchvision_small(num_classes=6):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(2)
    return perturb(VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=4, hidden_dim=48,
                                     mlp_dim=96, num_classes=num_classes))  # fmt: skip


def test_torchvision_vit_matches_explicit_reference_and_restores():
    model = _torchvision_small().double()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
    with DAAM(model) as daam:
        result = daam(x, target=2)
        single = daam(x[1:2], target=2)
    ref = explicit_maps(model, x, "mha", 1, (4, 4), logit_of(torch.tensor([2, 2, 2])))
    assert ref.abs().max() > 0 and relative_error(result.block_maps, ref) <= 1e-5
    assert relative_error(single.block_maps[0], result.block_maps[1]) <= 1e-10
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_torchvision_float32_fast_path_matches_float64():
    model = _torchvision_small()
    x = torch.randn(2, 3, 32, 32)
    with DAAM(model) as daam:
        fast = daam(x, target=1)
    ref = explicit_maps(model, x, "mha", 1, (4, 4), logit_of(torch.tensor([1, 1])))
    assert relative_error(fast.block_maps, ref) <= 1e-4


def test_open_clip_tower_explains_image_text_similarity():
    import open_clip

    torch.manual_seed(3)
    cfg = dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=3, width=48, head_width=12, patch_size=8),
               text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=4, layers=1))  # fmt: skip
    clip = open_clip.CLIP(**cfg)
    visual = perturb(clip.visual).double()
    texts = torch.randn(3, 16, dtype=torch.float64)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with DAAM(visual) as daam:
        result = daam(x, target=SimilarityTarget(texts))
    with torch.no_grad():
        sims = torch.nn.functional.normalize(visual(x), dim=1) @ torch.nn.functional.normalize(texts, dim=1).T
    assert result.target.tolist() == sims.argmax(1).tolist()
    chosen = result.target

    def score(output):
        normed = torch.nn.functional.normalize(output, dim=1) @ torch.nn.functional.normalize(texts, dim=1).T
        return normed[torch.arange(2), chosen]

    ref = explicit_maps(visual, x, "mha", 1, (4, 4), score)
    assert ref.abs().max() > 0 and relative_error(result.block_maps, ref) <= 1e-5
    with pytest.raises(ValueError, match="pass the vision tower"):
        DAAM(clip)


@pytest.mark.parametrize(
    "name, attribute", [("cait_xxs24_224", "blocks_token_only"), ("xcit_nano_12_p16_224", "cls_attn_blocks")]
)
def test_class_attention_models_map_their_class_attention_blocks(name, attribute):
    torch.manual_seed(4)
    model = perturb(timm.create_model(name, pretrained=False, img_size=64, num_classes=5)).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with DAAM(model) as daam:
        result = daam(x, target=[1, 4])
    assert result.num_blocks == len(getattr(model, attribute)) == 2
    ref = explicit_maps(model, x, "class_attention", 1, (4, 4), logit_of(torch.tensor([1, 4])),
                        class_attention=attribute)  # fmt: skip
    assert ref.abs().max() > 0 and relative_error(result.block_maps, ref) <= 1e-5


# (timm, transformers, torchvision) names of the per-block norms and MLP layers
RENAMED = (("norm1", "layernorm_before", "ln_1"), ("norm2", "layernorm_after", "ln_2"),
           ("mlp.fc1", "mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.fc2", "mlp.3"))  # fmt: skip


def test_same_vit_b16_weights_in_three_families_give_the_same_maps():
    torch.manual_seed(5)
    timm_model = perturb(
        timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10), 0.02
    ).double()
    sd = timm_model.state_dict()

    hf = transformers.ViTForImageClassification(
        transformers.ViTConfig(num_labels=10, layer_norm_eps=1e-6)
    ).double()
    hf_sd = {"vit.embeddings.cls_token": sd["cls_token"],
             "vit.embeddings.position_embeddings": sd["pos_embed"],
             "vit.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
             "vit.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
             "vit.layernorm.weight": sd["norm.weight"], "vit.layernorm.bias": sd["norm.bias"],
             "classifier.weight": sd["head.weight"], "classifier.bias": sd["head.bias"]}  # fmt: skip
    tv = torchvision.models.vit_b_16(num_classes=10).double()
    tv_sd = {"class_token": sd["cls_token"], "encoder.pos_embedding": sd["pos_embed"],
             "conv_proj.weight": sd["patch_embed.proj.weight"], "conv_proj.bias": sd["patch_embed.proj.bias"],
             "encoder.ln.weight": sd["norm.weight"], "encoder.ln.bias": sd["norm.bias"],
             "heads.head.weight": sd["head.weight"], "heads.head.bias": sd["head.bias"]}  # fmt: skip
    for i in range(12):
        b, h, t = f"blocks.{i}.", f"vit.layers.{i}.", f"encoder.layers.encoder_layer_{i}."
        q, k, v = sd[b + "attn.qkv.weight"].chunk(3)
        qb, kb, vb = sd[b + "attn.qkv.bias"].chunk(3)
        hf_sd |= {h + "attention.q_proj.weight": q, h + "attention.k_proj.weight": k,
                  h + "attention.v_proj.weight": v, h + "attention.q_proj.bias": qb,
                  h + "attention.k_proj.bias": kb, h + "attention.v_proj.bias": vb,
                  h + "attention.o_proj.weight": sd[b + "attn.proj.weight"],
                  h + "attention.o_proj.bias": sd[b + "attn.proj.bias"]}  # fmt: skip
        tv_sd |= {t + "self_attention.in_proj_weight": sd[b + "attn.qkv.weight"],
                  t + "self_attention.in_proj_bias": sd[b + "attn.qkv.bias"],
                  t + "self_attention.out_proj.weight": sd[b + "attn.proj.weight"],
                  t + "self_attention.out_proj.bias": sd[b + "attn.proj.bias"]}  # fmt: skip
        for ours, theirs_hf, theirs_tv in RENAMED:
            for p in ("weight", "bias"):
                hf_sd[f"{h}{theirs_hf}.{p}"] = sd[f"{b}{ours}.{p}"]
                tv_sd[f"{t}{theirs_tv}.{p}"] = sd[f"{b}{ours}.{p}"]
    hf.load_state_dict(hf_sd, strict=True)
    tv.load_state_dict(tv_sd, strict=True)
    hf.eval(), tv.eval()

    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    results = {}
    for family, model in (("timm", timm_model), ("transformers", hf), ("torchvision", tv)):
        with DAAM(model) as daam:
            results[family] = daam(x, target=7)
    torch.testing.assert_close(results["transformers"].logits, results["timm"].logits)
    assert results["timm"].block_maps.abs().max() > 0
    for family in ("transformers", "torchvision"):
        assert relative_error(results[family].block_maps, results["timm"].block_maps) <= 1e-5, family


# -- custom ViTs ------------------------------------------------------------------------------------
class TinyAttention(torch.nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(dim, dim) for _ in range(3))
        self.to_out = torch.nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (
            f(x).reshape(b, n, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v)
        )
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, c))


class TinyViT(torch.nn.Module):
    """A hand-written ViT: [class] token, 8x8 patches, pre-norm blocks, head on the [class] token."""

    def __init__(self, dim=32, depth=2, heads=4, classes=3):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, dim, 8, 8)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, dim))
        self.pos = torch.nn.Parameter(torch.randn(1, 17, dim) * 0.1)
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(dim) for _ in range(depth))
        self.attns = torch.nn.ModuleList(TinyAttention(dim, heads) for _ in range(depth))
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.pos
        for norm, attn in zip(self.norms, self.attns, strict=True):
            tokens = tokens + attn(norm(tokens))
        return self.head(tokens[:, 0])


class TinyViTAdapter(Adapter):
    """The whole adapter a custom ViT needs: where the projections are, prefix tokens, grid."""

    def sites(self):
        return [ProjectionSite(a, a.to_q, a.to_k, a.to_v, a.to_out, heads=a.heads) for a in self.model.attns]

    def prefix_tokens(self):
        return 1

    def grid(self, image_size):
        return image_size[0] // 8, image_size[1] // 8


def test_custom_vit_through_a_few_line_adapter():
    torch.manual_seed(6)
    model = TinyViT().double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with pytest.raises(TypeError, match="TinyViT.*Custom ViTs"):
        DAAM(model)
    with DAAM(model, adapter=TinyViTAdapter) as daam:
        result = daam(x, target=[0, 2])
    # reference: the explicit-projection wrapper understands to_q/to_k/to_v by aliasing
    for attn in model.attns:
        attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, attn.head_dim = (attn.to_q, attn.to_k, attn.to_v,
                                                                            attn.to_out, 8)  # fmt: skip
        attn.scaling = 8**-0.5
    ref = explicit_maps(model, x, "projection", 1, (4, 4), logit_of(torch.tensor([0, 2])))
    assert ref.abs().max() > 0 and relative_error(result.block_maps, ref) <= 1e-5
