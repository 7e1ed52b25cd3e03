"""UnFeMa's Perceptual Search and the baselines of its Tables 1/2: DeepHistReg's affine network and LARHI (checked
against transcriptions of the authors' code), their exhaustive initial alignment, TAHIR (LoFTR + RANSAC), the global
NCC loss; and a short unsupervised fit of DeepHistReg on stand-in pairs."""
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.blocks.warp import affine_to_displacement, pixel_matrix_to_theta, theta_to_pixel_matrix, warp
from lightning_modules.losses.registration import GlobalNCCLoss, global_ncc
from lightning_modules.unfema import (PerceptualSearch, UnFeMa, VGG19Features, perceptual_alignment_loss,
                                      rotation_matrix)
from lightning_modules.unfema_baselines import (DeepHistRegAffine, ExhaustiveSearch, LARHIAffine, TAHIRAffine,
                                                intensity_centroid)

TINY = dict(initial_dim=16, block_dims=(16, 24, 32), nhead=4, n_layers=1)


def _camera(size=64):
    from skimage import data

    return torch.from_numpy(cv2.resize(data.camera(), (size, size)).astype(np.float32) / 255.0)[None, None]


def _warp_pixel(image, matrix):
    shape = tuple(image.shape[2:])
    return warp(image, affine_to_displacement(pixel_matrix_to_theta(matrix, shape), shape))


# -- transcriptions of the authors' DeepHistReg code (networks/affine_network_simple.py, affine_network_attention.py)
class _CodeForwardLayer(nn.Module):
    def __init__(self, channels, pool=False):
        super().__init__()
        self.pool = pool
        if pool:
            self.pool_layer = nn.Sequential(nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=3))
            self.layer = nn.Sequential(nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=3),
                                       nn.GroupNorm(2 * channels, 2 * channels), nn.PReLU(),
                                       nn.Conv2d(2 * channels, 2 * channels, 3, stride=1, padding=1),
                                       nn.GroupNorm(2 * channels, 2 * channels), nn.PReLU())
        else:
            self.layer = nn.Sequential(nn.Conv2d(channels, channels, 3, stride=1, padding=1),
                                       nn.GroupNorm(channels, channels), nn.PReLU(),
                                       nn.Conv2d(channels, channels, 3, stride=1, padding=1),
                                       nn.GroupNorm(channels, channels), nn.PReLU())

    def forward(self, x):
        return self.pool_layer(x) + self.layer(x) if self.pool else x + self.layer(x)


class _CodeSimpleExtractor(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(2, 64, 7, stride=2, padding=3))
        self.layer_1 = _CodeForwardLayer(64, pool=True)
        self.layer_2 = _CodeForwardLayer(128, pool=False)
        self.layer_3 = _CodeForwardLayer(128, pool=True)
        self.layer_4 = _CodeForwardLayer(256, pool=False)
        self.layer_5 = _CodeForwardLayer(256, pool=True)
        self.layer_6 = _CodeForwardLayer(512, pool=True)
        self.last_layer = nn.Sequential(nn.Conv2d(1024, 512, 3, stride=2, padding=1), nn.GroupNorm(512, 512),
                                        nn.PReLU(), nn.Conv2d(512, 256, 3, stride=2, padding=1),
                                        nn.GroupNorm(256, 256), nn.PReLU(), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        x = self.input_layer(x)
        for k in range(1, 7):
            x = getattr(self, f"layer_{k}")(x)
        return self.last_layer(x)


class _CodeRegression(nn.Module):
    def __init__(self, hidden=False):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(256, 256), nn.PReLU(), nn.Linear(256, 6)) if hidden else \
            nn.Sequential(nn.Linear(256, 6))

    def forward(self, x):
        return self.fc(x).view(-1, 2, 3)


class _CodeSimpleAffine(nn.Module):
    def __init__(self):
        super().__init__()
        self.feature_extractor = _CodeSimpleExtractor()
        self.regression_network = _CodeRegression()

    def forward(self, source, target):
        return self.regression_network(self.feature_extractor(torch.cat((source, target), dim=1)).view(1, -1))


class _CodePatchExtractor(nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(1, 32, 7, stride=2, padding=3))
        self.layer_1 = _CodeForwardLayer(32, pool=True)
        self.layer_2 = _CodeForwardLayer(64, pool=True)
        self.layer_3 = _CodeForwardLayer(128, pool=True)
        self.layer_4 = _CodeForwardLayer(256)

    def forward(self, x):
        x = self.input_layer(x)
        for k in range(1, 5):
            x = getattr(self, f"layer_{k}")(x)
        return x


class _CodeAttentionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention_module = nn.Sequential(nn.Conv3d(1, 256, kernel_size=(256, 3, 3), padding=(0, 1, 1)),
                                              nn.GroupNorm(256, 256), nn.PReLU())
        self.compose_module = nn.Sequential(nn.Conv2d(256, 256, 3, stride=1, padding=1), nn.GroupNorm(256, 256),
                                            nn.PReLU(), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return self.compose_module(self.attention_module(x)[:, :, 0, :, :]).view(1, -1)


class _CodeAttentionAffine(nn.Module):
    def __init__(self, patch):
        super().__init__()
        self.feature_extractor = _CodePatchExtractor()
        self.feature_combiner = nn.Sequential(nn.Conv2d(512, 256, 3, stride=2, padding=1), nn.GroupNorm(256, 256),
                                              nn.PReLU(), nn.Conv2d(256, 256, 3, stride=2, padding=1),
                                              nn.GroupNorm(256, 256), nn.PReLU(), nn.AdaptiveAvgPool2d((1, 1)))
        self.attention_network = _CodeAttentionNet()
        self.regression_network = _CodeRegression(hidden=True)
        self.patch_size = (patch, patch)
        self.unfold = nn.Unfold(self.patch_size, stride=self.patch_size)

    def forward(self, source, target):
        p = self.patch_size
        pad_x = math.ceil(source.size(3) / p[1]) * p[1] - source.size(3)
        pad_y = math.ceil(source.size(2) / p[0]) * p[0] - source.size(2)
        pads = (math.floor(pad_x / 2), math.ceil(pad_x / 2), math.floor(pad_y / 2), math.ceil(pad_y / 2))
        us, ut = self.unfold(F.pad(source, pads)), self.unfold(F.pad(target, pads))
        us = us.view(us.size(0), 1, p[0], p[1], us.size(2))[0].permute(3, 0, 1, 2)
        ut = ut.view(ut.size(0), 1, p[0], p[1], ut.size(2))[0].permute(3, 0, 1, 2)
        grid = (math.ceil(source.size(2) / p[0]), math.ceil(source.size(3) / p[1]))
        x = torch.cat((self.feature_extractor(us), self.feature_extractor(ut)), dim=1)
        x = self.feature_combiner(x)
        x = x.view(grid[0], grid[1], x.size(1)).permute(2, 0, 1)
        x = x.reshape(1, 1, x.size(0), x.size(1), x.size(2))
        return self.regression_network(self.attention_network(x))


def test_deephistreg_equals_the_authors_network_and_counts_its_parameters():
    torch.manual_seed(0)
    code = _CodeSimpleAffine().eval()
    ours = DeepHistRegAffine(width=64, prealign=False).eval()
    ours.load_code_state_dict(code.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in code.parameters()) == 32_466_260
    source, target = torch.rand(1, 1, 96, 80), torch.rand(1, 1, 96, 80)
    with torch.no_grad():
        torch.testing.assert_close(ours(source, target), code(source, target), atol=1e-5, rtol=1e-4)


def test_larhi_equals_the_authors_network_pair_by_pair():
    torch.manual_seed(1)
    code = _CodeAttentionAffine(patch=32).eval()
    ours = LARHIAffine(patch_size=32, width=32, prealign=False).eval()
    ours.load_code_state_dict(code.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in code.parameters())
    source, target = torch.rand(2, 1, 70, 90), torch.rand(2, 1, 70, 90)  # padded to a 3 x 3 grid of patches
    with torch.no_grad():
        batched = ours(source, target)
        for b in range(2):  # the code runs one pair at a time; ours batches them
            torch.testing.assert_close(batched[b:b + 1], code(source[b:b + 1], target[b:b + 1]), atol=1e-5,
                                       rtol=1e-4)


def test_identity_init_starts_at_the_identity_and_gradients_reach_every_layer():
    torch.manual_seed(2)
    for net in (DeepHistRegAffine(width=8, prealign=False), LARHIAffine(patch_size=32, width=8, prealign=False)):
        moving, fixed = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
        theta = net(moving, fixed)
        torch.testing.assert_close(theta.detach(), torch.eye(2, 3).expand(2, 2, 3))
        GlobalNCCLoss()(warp(moving, affine_to_displacement(theta, (64, 64))), fixed).backward()
        head = net.fc if isinstance(net.fc, nn.Linear) else net.fc[-1]
        assert head.weight.grad.abs().sum() > 0  # the deeper layers get gradient after the first step (zero head)


def test_global_ncc_loss_is_minus_the_correlation_coefficient():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 1, 16, 16, generator=gen), torch.rand(2, 1, 16, 16, generator=gen)
    b = b + a
    expected = -np.mean([np.corrcoef(a[n].flatten(), b[n].flatten())[0, 1] for n in range(2)])
    torch.testing.assert_close(GlobalNCCLoss()(a, b), torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=0)


def test_exhaustive_search_undoes_a_rotation_and_a_shift():
    image = torch.zeros(1, 1, 96, 96)
    image[..., 16:80, 16:80] = _camera(64)  # tissue on a dark background, as the inverted sections
    truth = torch.eye(3).unsqueeze(0)  # target -> source: rotate 40 deg about the centre, shift by (6, -4)
    truth = rotation_matrix(40.0, (96, 96)).unsqueeze(0)
    truth[:, :2, 2] += torch.tensor([6.0, -4.0])
    source = image
    target = _warp_pixel(image, truth)
    centre = intensity_centroid(target)
    assert centre.shape == (1, 2)
    theta = ExhaustiveSearch(step=2.0)(source, target)
    registered = warp(source, affine_to_displacement(theta, (96, 96)))
    assert float(global_ncc(registered, target)) > 0.95 > float(global_ncc(source, target)) + 0.3
    found = theta_to_pixel_matrix(theta, (96, 96))[0, :2, :2]
    assert abs(math.degrees(math.atan2(float(found[1, 0]), float(found[0, 0]))) - 40.0) <= 2.0


def test_prealigned_network_composes_the_search_with_its_affine():
    image = torch.zeros(1, 1, 64, 64)
    image[..., 8:56, 8:56] = _camera(48)
    target = _warp_pixel(image, rotation_matrix(30.0, (64, 64)).unsqueeze(0))
    net = DeepHistRegAffine(width=8, prealign=True, search_step=5.0)  # identity head: the search alone
    torch.testing.assert_close(net(image, target), ExhaustiveSearch(step=5.0)(image, target), atol=1e-5, rtol=0)


def test_tahir_loads_loftr_weights_and_undoes_a_quarter_turn(tmp_path):
    from kornia.feature import LoFTR

    torch.manual_seed(4)
    loftr = LoFTR(pretrained=None)
    torch.save({"state_dict": {f"matcher.{k}": v for k, v in loftr.state_dict().items()}}, tmp_path / "loftr.ckpt")
    tahir = TAHIRAffine(weights=str(tmp_path / "loftr.ckpt"), ransac_threshold=1.0, ransac_trials=50)
    torch.testing.assert_close(tahir.loftr.backbone.layer1_outconv.weight, loftr.backbone.layer1_outconv.weight)
    image = _camera(64)
    theta = tahir(torch.rot90(image, 1, (2, 3)), image)
    registered = warp(torch.rot90(image, 1, (2, 3)), affine_to_displacement(theta, (64, 64)))
    assert theta.shape == (1, 2, 3) and float(global_ncc(registered, image)) > 0.9


# -- Perceptual Search ------------------------------------------------------------------------------------------
def test_vgg19_features_are_torchvisions_up_to_relu5_1(tmp_path):
    vgg = VGG19Features()
    # torchvision vgg19().features has 20,024,384 parameters; up to conv5_1 drops conv5_2..conv5_4 (3 x 2,359,808)
    assert sum(p.numel() for p in vgg.parameters()) == 20_024_384 - 3 * 2_359_808 == 12_944_960
    assert not any(p.requires_grad for p in vgg.parameters())
    outs = vgg(torch.rand(1, 1, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8),
                                                  (512, 4, 4)]
    # a torchvision-style state dict (later layers and the classifier included) loads by key
    state = {f"features.{k}": v.clone() + 1 for k, v in vgg.features.state_dict().items()}
    state |= {"features.30.weight": torch.zeros(1), "classifier.0.weight": torch.zeros(1)}
    torch.save(state, tmp_path / "vgg19.pth")
    loaded = VGG19Features(str(tmp_path / "vgg19.pth"))
    torch.testing.assert_close(loaded.features[28].weight, vgg.features[28].weight + 1)


def _code_pyramid_level(image, scale):
    """The UnFeMa code's AntiAliasInterpolation2d (explicit Gaussian kernel, zero padding, nearest resize)."""
    if scale == 1.0:
        return image
    sigma = (1 / scale - 1) / 2
    size = 2 * round(sigma * 4) + 1
    grid = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-grid ** 2 / (2 * sigma ** 2))
    kernel = (g[:, None] * g[None, :])
    kernel = (kernel / kernel.sum()).view(1, 1, size, size)
    ka = size // 2
    out = F.conv2d(F.pad(image, (ka, ka, ka, ka)), kernel)
    return F.interpolate(out, scale_factor=(scale, scale))


def test_perceptual_alignment_loss_equals_a_per_channel_reference():
    torch.manual_seed(5)
    vgg = VGG19Features()
    source, target = torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64)
    target = 0.5 * source + target
    expected = 0.0
    masked = []
    for image in (source, target):
        image = image.clone()
        image[..., :6, :] = 0
        image[..., -6:, :] = 0
        image[..., :6] = 0
        image[..., -6:] = 0
        masked.append(image)
    for scale in (1.0, 0.5):
        feats_s = vgg(_code_pyramid_level(masked[0], scale))
        feats_t = vgg(_code_pyramid_level(masked[1], scale))
        for fs, ft in zip(feats_s, feats_t):
            values = []
            for c in range(fs.shape[1]):
                a, b = fs[0, c].flatten().double(), ft[0, c].flatten().double()
                a, b = a - a.mean(), b - b.mean()
                values.append(float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum() + 1e-8)))
            expected -= np.mean(values)
    ours = perceptual_alignment_loss(source, target, vgg, scales=(1.0, 0.5), border=0.1)
    assert ours.shape == (1,)
    assert float(ours) == pytest.approx(expected, abs=1e-4)


def test_perceptual_search_undoes_quarter_turns_and_prefers_a_better_affine():
    torch.manual_seed(6)
    image = _camera(48)
    search = PerceptualSearch(scales=(1.0,))
    for k in (1, 3):
        turned = torch.rot90(image, k, (2, 3))
        registered = warp(turned, affine_to_displacement(search(turned, image), (48, 48)))
        assert float(global_ncc(registered, image)) > 0.99
        assert float(search.best_angles(turned, image)[0]) == (360 - 90 * k) % 360
    # Eq. 3: with an estimate that knows the residual shift, the rotation + affine candidate wins
    shift = torch.eye(3).unsqueeze(0)
    shift[:, 0, 2] = 7.0
    shifted = _warp_pixel(image, torch.linalg.inv(shift))  # the target seen shifted by 7 px
    matrix, angle, _ = search.search(image, shifted, estimate=lambda rotated, fixed: torch.linalg.inv(shift))
    assert float(angle[0]) == 0.0
    torch.testing.assert_close(matrix, torch.linalg.inv(shift))


def test_unfema_with_perceptual_search_registers_and_keeps_vgg_out_of_its_state_dict():
    torch.manual_seed(7)
    image = _camera(64)
    net = UnFeMa(**TINY, threshold=0.0, border=1, ransac_threshold=1.0, ransac_trials=50,
                 perceptual_search=PerceptualSearch(scales=(1.0, 0.5))).eval()
    assert not any("vgg" in key for key in net.state_dict())
    turned = torch.rot90(image, 2, (2, 3))
    theta = net(turned, image)
    registered = warp(turned, affine_to_displacement(theta, (64, 64)))
    assert theta.shape == (1, 2, 3) and float(global_ncc(registered, image)) > 0.9


def test_deephistreg_fit_raises_the_global_ncc_and_lowers_the_landmark_error():
    """A short unsupervised fit on 4 stand-in pairs (one stain, translations only): the global NCC loss falls by a
    clear margin and the median landmark error goes below the unregistered one (seen: NCC 0.695 -> 0.83, MMrTRE
    0.0264 -> 0.0226)."""
    import lightning as L

    from datamodules.standins.synthetic_ihc import SyntheticIHCPairs
    from lightning_modules.metrics.registration import nan_median

    L.seed_everything(0)
    pairs = SyntheticIHCPairs(4, seed=3, image_size=64, crop_size=128, max_rotation=0.0, max_shear=0.0,
                              scale_range=(1.0, 1.0), max_translation=0.1, stain_range=(1.0, 1.0), elastic_pixels=0.0)
    batch = torch.utils.data.default_collate([pairs[i] for i in range(4)])
    moving, fixed = batch["moving"], batch["fixed"]
    net = DeepHistRegAffine(width=8, prealign=False)
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)

    def mmrtre(theta):
        matrix = theta_to_pixel_matrix(theta.detach(), (64, 64)).double()
        points = batch["fixed_landmarks"].double()
        mapped = torch.cat([points, torch.ones_like(points[..., :1])], -1) @ matrix.transpose(1, 2)
        error = (mapped[..., :2] - batch["moving_landmarks"]).norm(dim=-1) / batch["diagonal"].double()[:, None]
        return float(nan_median(error).median())

    losses = []
    for _ in range(40):
        theta = net(moving, fixed)
        loss = GlobalNCCLoss()(warp(moving, affine_to_displacement(theta, (64, 64))), fixed)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    with torch.no_grad():
        theta = net(moving, fixed)
    assert losses[-1] < losses[0] - 0.05
    assert mmrtre(theta) < mmrtre(torch.eye(2, 3).expand(4, 2, 3))
