"""SSL-ALPNet (Guided-SET-DCL's Table 1 baseline): the dilated ResNet encoder's size and stride, the adaptive local
prototype scores against the formula written out, the small-structure fallback, prototype alignment and the episodic
task's loss with it."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.setdcl_alpnet import ALPNet, safe_norm
from lightning_modules.tasks.episodic_segmentation import EpisodicSegmentationTask
from lightning_modules.utils import count_parameters


def test_release_size_is_resnet101_plus_the_256_channel_reduction():
    with torch.device("meta"):
        network = ALPNet()
    # torchvision's resnet101 has 44,549,160 parameters, 2,049,000 of them in fc; + the 1x1 conv 2048 -> 256
    assert count_parameters(network) == 44_549_160 - 2_049_000 + 2048 * 256


@pytest.mark.parametrize("stride", [8, 16])
def test_dilated_encoder_keeps_output_stride_and_torchvision_dilations(stride):
    network = ALPNet("resnet18", width=0.25, feature_channels=32, output_stride=stride).eval()
    assert network.features(torch.rand(1, 1, 64, 64)).shape == (1, 32, 64 // stride, 64 // stride)
    layer4 = network.backbone.layer4
    expected = (2, 4) if stride == 8 else (1, 2)  # a stage's first block keeps the previous dilation
    assert (layer4[0].conv1.dilation[0], layer4[1].conv1.dilation[0]) == expected
    assert network.backbone.layer3[0].conv1.stride == ((1, 1) if stride == 8 else (2, 2))


def reference_scores(query, support, mask, window, threshold, with_global):
    """The ALP score written out in numpy: local prototypes (pooled windows whose pooled mask > threshold, plus the
    masked average when ``with_global``), cosine x 20, the softmax-weighted sum over prototypes."""
    c, h, w = support.shape
    protos = []
    for i in range(0, h - window + 1, window):
        for j in range(0, w - window + 1, window):
            if mask[i:i + window, j:j + window].mean() > threshold:
                protos.append(support[:, i:i + window, j:j + window].mean((1, 2)))
    if with_global:
        protos.append((support * mask).sum((1, 2)) / (mask.sum() + 1e-5))
    protos = np.stack(protos)
    protos = protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-4)
    q = query / np.maximum(np.linalg.norm(query, axis=0, keepdims=True), 1e-4)
    d = 20 * np.einsum("pc,chw->phw", protos, q)
    weights = np.exp(d - d.max(0)) / np.exp(d - d.max(0)).sum(0)
    return (weights * d).sum(0)


def test_local_prototype_scores_match_the_formula():
    torch.manual_seed(0)
    network = ALPNet("resnet18", width=0.25, feature_channels=8)
    query, support = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)
    fg = torch.zeros(1, 1, 8, 8)
    fg[..., :4, :8] = 1  # two training windows fully foreground: local + global prototypes
    for foreground, mask in ((True, fg), (False, 1 - fg)):
        for window in (4, 2):
            ours = network.class_score(query, support, mask, foreground, window)[0, 0].numpy()
            ref = reference_scores(query[0].numpy(), support[0].numpy(), mask[0, 0].numpy(), window, 0.95, foreground)
            np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_small_structure_uses_the_global_prototype_alone():
    torch.manual_seed(0)
    network = ALPNet("resnet18", width=0.25, feature_channels=8)
    query, support = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)
    fg = torch.zeros(1, 1, 8, 8)
    fg[..., 2:4, 2:4] = 1  # no 4x4 window reaches 0.95
    proto = (support * fg).sum((-2, -1)) / (fg.sum() + 1e-5)
    expected = 20 * F.cosine_similarity(query, proto[..., None, None], dim=1, eps=1e-4)
    torch.testing.assert_close(network.class_score(query, support, fg, True, 2)[:, 0], expected)
    assert torch.allclose(safe_norm(torch.zeros(1, 3, 1, 1)), torch.zeros(1, 3, 1, 1))  # floored norm, no NaN


def episode(batch=2, size=32):
    torch.manual_seed(1)
    image = torch.rand(batch, 1, size, size)
    mask = torch.zeros(batch, 1, size, size)
    mask[..., 8:24, 8:24] = 1
    return image, mask


def test_forward_alignment_and_gradients():
    network = ALPNet("resnet18", width=0.25, feature_channels=16)
    image, mask = episode()
    out = network(image, mask, image.flip(-1), None, torch.rand(2, 3, 1, 32, 32), torch.ones(2, 3, 1, 32, 32))
    assert out["probabilities"].shape == (2, 2, 32, 32)
    torch.testing.assert_close(out["probabilities"].sum(1), torch.ones(2, 32, 32))
    out["losses"]["align"].backward()
    assert network.localconv.weight.grad.abs().sum() > 0 and network.backbone.conv1.weight.grad.abs().sum() > 0
    network.eval()
    with torch.no_grad():
        assert "losses" not in network(image, mask, image)


def test_task_loss_is_weighted_cross_entropy_plus_alignment():
    network = ALPNet("resnet18", width=0.25, feature_channels=16)
    task = EpisodicSegmentationTask(network, ce_weight=1.0, aux_weight=1.0, aux_term_weights={"align": 1.0},
                                    use_prior=False)
    image, mask = episode()
    batch = {"support_image": image, "support_mask": mask, "image": image, "mask": mask}
    torch.manual_seed(0)
    outputs = task.episode_outputs(batch)
    losses = task.episode_losses(outputs, mask)
    weighted = F.cross_entropy(outputs["logits"], mask[:, 0].long(), weight=torch.tensor([0.05, 1.0]))
    torch.testing.assert_close(losses["ce"], weighted, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses["loss"], weighted + outputs["losses"]["align"], rtol=1e-4, atol=1e-5)
