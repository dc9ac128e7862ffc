"""The APIs users already write: captum's ``attribute`` and pytorch-grad-cam's CAM objects and
targets, checked with the installed captum and grad-cam packages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

from vitflow import DAAM, DAAMAttribution, DAAMCam
from vitflow.metrics.localization import upsample_maps
from vitflow.models.demo import load_demo_model


@pytest.fixture(scope="module")
def demo():
    model, preprocessing = load_demo_model()
    torch.manual_seed(0)
    return model, torch.randn(4, 3, 96, 96)


def _library(model, x, target):
    with DAAM(model) as daam:
        return upsample_maps(daam(x, target=target).final, x.shape[-2:])


def test_attribute_returns_captum_shaped_input_resolution_maps(demo):
    model, x = demo
    attr = DAAMAttribution(model).attribute(x, target=2)
    assert attr.shape == (4, 1, 96, 96) and attr.dtype == x.dtype and attr.device == x.device
    torch.testing.assert_close(attr[:, 0], _library(model, x, 2))
    as_tuple = DAAMAttribution(model).attribute((x,), target=2)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], attr)


def test_attribute_target_broadcasting_follows_captum(demo):
    """captum's rules: an int applies to every example; a list or (B,) tensor gives one per example;
    a 0-d tensor is an int. Checked against captum's own target expansion."""
    from captum._utils.common import _expand_target

    model, x = demo
    explainer = DAAMAttribution(model)
    by_int = explainer.attribute(x, target=3)
    assert torch.equal(explainer.attribute(x, target=[3, 3, 3, 3]), by_int)
    assert torch.equal(explainer.attribute(x, target=torch.tensor(3)), by_int)
    per_example = explainer.attribute(x, target=torch.tensor([0, 1, 2, 3]))
    for i in range(4):
        torch.testing.assert_close(per_example[i, 0], _library(model, x[i : i + 1], i)[0])
    # captum repeats a per-example target when it expands inputs (as NoiseTunnel does): same here
    expanded = _expand_target([0, 1, 2, 3], 2)
    repeated = explainer.attribute(torch.cat([x, x]), target=expanded)
    torch.testing.assert_close(repeated, torch.cat([per_example, per_example]))
    with pytest.raises(ValueError, match="3 targets for 4 examples"):
        explainer.attribute(x, target=[0, 1, 2])
    with pytest.raises(ValueError, match="tuple targets"):
        explainer.attribute(x, target=(0, 1))


def test_internal_batch_size_gives_the_same_attributions(demo):
    model, x = demo
    explainer = DAAMAttribution(model)
    whole = explainer.attribute(x, target=[0, 1, 2, 3])
    torch.testing.assert_close(explainer.attribute(x, target=[0, 1, 2, 3], internal_batch_size=3), whole)
    torch.testing.assert_close(explainer.attribute(x, target=[0, 1, 2, 3], internal_batch_size=1), whole)


def test_captum_metrics_take_daam_as_an_explanation_function(demo):
    """captum.metrics call ``attribute`` with perturbed, expanded inputs and expanded targets."""
    from captum.metrics import infidelity, sensitivity_max

    model, x = demo
    explainer = DAAMAttribution(model)
    sensitivity = sensitivity_max(explainer.attribute, x[:2], target=[1, 2], n_perturb_samples=3)
    assert sensitivity.shape == (2,) and torch.isfinite(sensitivity).all()

    def perturb(inputs):
        noise = torch.randn_like(inputs) * 0.01
        return noise, inputs - noise

    attributions = explainer.attribute(x[:2], target=[1, 2]).expand(-1, 3, -1, -1)
    score = infidelity(model, perturb, x[:2], attributions, target=[1, 2], n_perturb_samples=4)
    assert score.shape == (2,) and torch.isfinite(score).all()


def test_daam_cam_is_a_grad_cam_drop_in(demo):
    model, x = demo
    with DAAMCam(model=model, target_layers=[model.blocks[-1].norm1]) as cam:
        grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in (0, 1, 2, 3)])
    assert grayscale.shape == (4, 96, 96) and grayscale.dtype == np.float32
    assert (
        grayscale.min() >= 0
        and grayscale.max() <= 1
        and np.allclose(grayscale.max(axis=(1, 2)), 1, atol=1e-5)
    )
    library = _library(model, x, [0, 1, 2, 3])
    low = library.amin(dim=(1, 2), keepdim=True)
    expected = (library - low) / (1e-7 + (library - low).amax(dim=(1, 2), keepdim=True))
    np.testing.assert_allclose(grayscale, expected.numpy(), atol=1e-6)
    assert cam.outputs.shape == (4, model.num_classes)  # as grad-cam keeps the model's outputs
    rgb = np.random.default_rng(0).random((96, 96, 3)).astype(np.float32)
    visual = show_cam_on_image(rgb, grayscale[0], use_rgb=True)
    assert visual.shape == (96, 96, 3) and visual.dtype == np.uint8
    predicted = DAAMCam(model)(input_tensor=x)  # targets=None: the predicted class, as grad-cam
    np.testing.assert_allclose(predicted, DAAMCam(model)(input_tensor=x, targets=None))
    with pytest.raises(NotImplementedError, match="eigen_smooth"):
        cam(input_tensor=x, eigen_smooth=True)


def test_grad_cam_targets_work_as_daam_targets(demo):
    model, x = demo
    with DAAM(model) as daam:
        by_index = daam(x, target=[0, 1, 2, 3])
        by_object = daam(x, target=[ClassifierOutputTarget(c) for c in (0, 1, 2, 3)])
        one_for_all = daam(x, target=ClassifierOutputTarget(2))
        softmax = daam(x, target=[ClassifierOutputSoftmaxTarget(c) for c in (0, 1, 2, 3)])
        difference = daam(x, target=lambda out: out[1] - out[0])
    torch.testing.assert_close(by_object.block_maps, by_index.block_maps)
    assert by_object.target.tolist() == [0, 1, 2, 3] and one_for_all.target.tolist() == [2, 2, 2, 2]
    with DAAM(model) as daam:
        torch.testing.assert_close(one_for_all.block_maps, daam(x, target=2).block_maps)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(softmax.score, logits.softmax(1)[torch.arange(4), torch.arange(4)])
    torch.testing.assert_close(difference.score, logits[:, 1] - logits[:, 0])
    assert difference.target.tolist() == [-1, -1, -1, -1]
    with DAAM(model) as daam, pytest.raises(ValueError, match="2 target callables for a batch of 4"):
        daam(x, target=[ClassifierOutputTarget(0), ClassifierOutputTarget(1)])
