"""One gateway to the model: the capture context, wrapped models, batch invariance, checkpoints at
another resolution, and registries that a new method or metric joins from one place."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from models import make_timm
from safetensors.torch import save_file

from vitflow import DAAM
from vitflow.adapters import AttentionSite, resolve_adapter
from vitflow.data.images import load_image
from vitflow.data.items import read_items
from vitflow.data.scenes import write_scenes
from vitflow.explainer.capture import Capture, DecompositionError
from vitflow.methods import trace_attention
from vitflow.models import load_model
from vitflow.models.demo import load_demo_model
from vitflow.registry import METHODS, METRICS, register_method, register_metric
from vitflow.runs.evaluate import evaluate
from vitflow.runs.explain import explain_files


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return make_timm("vit_tiny_patch16_224", img_size=32, num_classes=5)


def test_capture_restores_the_model_even_when_the_caller_fails(vit):
    before = copy.deepcopy(vit.state_dict())
    flags = [p.requires_grad for p in vit.parameters()]
    x = torch.randn(2, 3, 32, 32)
    with Capture(vit) as capture:
        with pytest.raises(RuntimeError, match="caller"), capture.run(x, target=1) as p:
            assert all(r.coefficients is not None for r in capture.records)
            assert p.logits.shape == (2, 5) and p.scored.target.tolist() == [1, 1]
            assert not any(q.requires_grad for q in vit.parameters())  # frozen during the pass
            raise RuntimeError("caller")
        assert all(r.attn_row is None and r.output is None for r in capture.records)  # cleared
    assert [p.requires_grad for p in vit.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in vit.modules())
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        with Capture(vit) as capture, capture.run(x):
            pass


def test_the_attention_trace_checks_the_decomposition_too(vit):
    class Doubled(AttentionSite):  # a site that misreports its softmax scale
        def __init__(self, inner):
            self.inner, self.module = inner, inner.module

        @property
        def scale(self):
            return 2 * self.inner.scale

        def install(self, record):
            return self.inner.install(record)

    class Wrong(type(resolve_adapter(vit))):
        def sites(self):
            return [Doubled(site) for site in super().sites()]

    with pytest.raises(DecompositionError, match="do not sum to the model's"):
        trace_attention(vit, torch.randn(1, 3, 32, 32), adapter=Wrong)


def test_compiled_and_data_parallel_models_give_the_same_maps(vit, tmp_path):
    x = torch.randn(3, 3, 32, 32)
    with DAAM(vit) as daam:
        plain = daam(x).maps
    wrapped = [torch.compile(vit), torch.nn.DataParallel(vit)]
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1
    )
    try:
        wrapped.append(torch.nn.parallel.DistributedDataParallel(vit))
        for model in wrapped:
            with DAAM(model) as daam:
                maps = daam(x).maps
            assert torch.equal(maps, plain), type(model).__name__
    finally:
        torch.distributed.destroy_process_group()


def test_a_scene_gives_the_same_map_alone_in_a_batch_of_8_and_as_the_9th_image(tmp_path):
    model, preprocessing = load_demo_model()
    scenes = write_scenes(tmp_path / "s", 9, seed=2)
    paths = [tmp_path / "s" / entry["image"] for entry in scenes["scenes"]]
    x = torch.stack([preprocessing(load_image(p)) for p in paths])
    with DAAM(model) as daam:
        alone = daam(x[8:9])
        in_eight = daam(x[1:9])
    torch.testing.assert_close(in_eight.maps[-1:], alone.maps, rtol=1e-5, atol=1e-7)
    assert torch.equal(in_eight.target[-1:], alone.target)
    report = explain_files(model, preprocessing, paths, tmp_path / "out", batch_size=8)
    ninth = report.manifests[8]
    assert ninth["image"] == str(paths[8]) and ninth["target"]["index"] == int(alone.target[0])
    final = alone.final[0]
    assert ninth["blocks"][-1]["map"]["sum"] == pytest.approx(float(final.sum()), rel=1e-5)
    assert ninth["blocks"][-1]["map"]["argmax"] == list(divmod(int(final.argmax()), final.shape[1]))


def test_a_timm_checkpoint_at_another_resolution_is_built_for_it(tmp_path):
    import timm

    torch.manual_seed(0)
    # DINOv2-S/14 fine-tuned at 224 px: 257 position rows where the default model has 1370
    tuned = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224, num_classes=3)
    save_file(tuned.state_dict(), tmp_path / "w.safetensors")
    loaded = load_model("vit_small_patch14_dinov2", tmp_path / "w.safetensors")
    assert loaded.model.patch_embed.img_size == (224, 224)
    assert loaded.preprocessing.config["input_size"] == (3, 224, 224)
    assert resolve_adapter(loaded.model).grid((224, 224)) == (16, 16)
    explicit = load_model("vit_small_patch14_dinov2", tmp_path / "w.safetensors", img_size=224)
    assert explicit.model.pos_embed.shape == loaded.model.pos_embed.shape == (1, 257, 384)


def test_a_method_and_a_metric_join_evaluate_from_one_place(tmp_path, monkeypatch):
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))

    @register_method("centre_prior")
    def centre_prior(inputs):
        """A map that is highest in the middle of the grid, whatever the image."""
        h, w = inputs.adapter.grid(tuple(inputs.x.shape[-2:]))
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centre = -((ys - (h - 1) / 2) ** 2 + (xs - (w - 1) / 2) ** 2).float()
        return centre.expand(len(inputs.x), h, w)

    @register_metric("map_peak_row", higher_is_better=False, needs_mask=False)
    def map_peak_row(maps, context):
        """The grid row of each map's maximum."""
        return (maps.flatten(1).argmax(1) // maps.shape[-1]).double()

    model, preprocessing = load_demo_model()
    write_scenes(tmp_path / "s", 2, seed=0)
    summary = evaluate(
        model,
        preprocessing,
        read_items(tmp_path / "s"),
        tmp_path / "e",
        methods=["daam", "centre_prior"],
        metrics=["map_peak_row"],
        per_block_metrics=[],
    )
    record = json.loads((tmp_path / "e" / "records.jsonl").read_text().splitlines()[0])
    assert record["scores"]["centre_prior"]["map_peak_row"] == 5.0  # 12x12 grid: rows 5 and 6 tie, first wins
    assert "map_peak_row ↓" in (tmp_path / "e" / "results.md").read_text()
    assert set(summary["methods"]) == {"daam", "centre_prior"}
