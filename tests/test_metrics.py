"""Tests of examples.metrics against closed forms, definitions and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from examples.metrics import (
    FID_WEIGHTS_ENV,
    FID_WEIGHTS_FILENAME,
    ConfusionMatrix,
    FeatureExtractor,
    FeatureStatistics,
    FIDInceptionV3,
    GenerationEvaluator,
    SmallSegmenter,
    compute_fid,
    fid_from_statistics,
    frechet_distance,
    gaussian_window,
    kernel_inception_distance,
    load_fid_inception,
    load_segmenter,
    polynomial_kernel,
    psnr,
    save_segmenter,
    segmentation_score,
    split_batch,
    ssim,
    train_segmenter,
    unbiased_mmd2,
)
from examples.metrics.inception import _tf_avg_pool

METHODS = ["sqrtm", "eigh"]
FAST = settings(max_examples=25, deadline=None)


def random_spd(dim: int, rng: np.random.Generator, *, scale: float = 1.0) -> np.ndarray:
    factor = rng.normal(size=(dim, dim))
    return scale * (factor @ factor.T / dim + 0.1 * np.eye(dim))


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def tiny_conv_extractor(seed: int = 0, name: str = "random conv (test only)") -> FeatureExtractor:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3), torch.nn.AdaptiveAvgPool2d(1)
    )
    return FeatureExtractor(net, name=name)


class OracleSegmenter(torch.nn.Module):
    """Reads the class id written into channel 0 of an image (id / 10) and returns one-hot logits."""

    def __init__(self, num_classes: int, *, downsample: int = 1) -> None:
        super().__init__()
        self.num_classes, self.downsample = num_classes, downsample

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        ids = (images[:, 0] * 10).round().long().clamp(0, self.num_classes - 1)  # (B, H, W)
        logits = torch.nn.functional.one_hot(ids, self.num_classes).permute(0, 3, 1, 2).float()  # (B, K, H, W)
        return logits[..., :: self.downsample, :: self.downsample]


def images_encoding(semantic: torch.Tensor) -> torch.Tensor:
    """(B, H, W) ids -> (B, 3, H, W) images in [-1, 1] whose channel 0 holds id / 10."""
    images = torch.zeros(semantic.shape[0], 3, *semantic.shape[1:])
    images[:, 0] = semantic.float() / 10
    return images


# --- Frechet distance -------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_frechet_distance_is_zero_for_identical_statistics(method):
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=12), random_spd(12, rng)
    assert abs(frechet_distance(mu, sigma, mu, sigma, method=method)) < 1e-9


@pytest.mark.parametrize("method", METHODS)
def test_frechet_distance_near_zero_for_identical_singular_covariances(method):
    # Fewer samples than dimensions, as with 2048-d features: the covariance is singular.
    features = np.random.default_rng(1).normal(size=(10, 32))
    mu, sigma = features.mean(0), np.cov(features, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma, method=method)) < 1e-4 * np.trace(sigma)


@FAST
@given(
    variances=st.lists(
        st.tuples(st.floats(1e-3, 10.0), st.floats(1e-3, 10.0), st.floats(-3, 3), st.floats(-3, 3)),
        min_size=1,
        max_size=6,
    )
)
def test_frechet_distance_diagonal_closed_form(variances):
    s1, s2, m1, m2 = (np.array(column) for column in zip(*variances, strict=True))
    expected = np.sum((m1 - m2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    for method in METHODS:
        got = frechet_distance(m1, np.diag(s1), m2, np.diag(s2), method=method)
        assert got == pytest.approx(expected, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_frechet_distance_commuting_non_diagonal_closed_form(method):
    # Covariances sharing eigenvectors Q: tr((S1 S2)^1/2) = sum(sqrt(a b)) although neither is diagonal.
    rng = np.random.default_rng(2)
    q = random_rotation(7, rng)
    a, b = rng.uniform(0.1, 5, size=7), rng.uniform(0.1, 5, size=7)
    mu1, mu2 = rng.normal(size=7), rng.normal(size=7)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T, method=method)
    assert got == pytest.approx(expected, rel=1e-9)


@FAST
@given(seed=st.integers(0, 10_000))
def test_frechet_distance_non_commuting_2x2_closed_form(seed):
    # For 2x2 M with positive eigenvalues, tr(M^1/2) = sqrt(tr M + 2 sqrt(det M)), M = S1 S2.
    rng = np.random.default_rng(seed)
    s1, s2 = random_spd(2, rng), random_spd(2, rng, scale=3.0)
    mu1, mu2 = rng.normal(size=2), rng.normal(size=2)
    trace_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    for method in METHODS:
        assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_frechet_methods_agree_and_are_symmetric():
    rng = np.random.default_rng(3)
    s1, s2 = random_spd(40, rng), random_spd(40, rng, scale=2.0)
    mu1, mu2 = rng.normal(size=40), rng.normal(size=40)
    by_sqrtm = frechet_distance(mu1, s1, mu2, s2, method="sqrtm")
    assert frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(by_sqrtm, rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(by_sqrtm, rel=1e-8)
    # torch inputs give the same value
    assert frechet_distance(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2))) == pytest.approx(by_sqrtm, rel=1e-12)


def test_frechet_distance_rejects_bad_input():
    eye = np.eye(3)
    with pytest.raises(ValueError, match="mu2"):
        frechet_distance(np.zeros(3), eye, np.zeros(4), eye)
    with pytest.raises(ValueError, match="sigma1"):
        frechet_distance(np.zeros(3), np.ones((3, 2)), np.zeros(3), eye)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([0.0, np.nan, 0.0]), eye, np.zeros(3), eye)
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros(3), eye, np.zeros(3), eye, method="svd")


# --- streaming statistics ---------------------------------------------------------------------


@FAST
@given(batch_sizes=st.lists(st.integers(0, 9), min_size=1, max_size=6).filter(lambda sizes: sum(sizes) >= 2))
def test_streaming_statistics_equal_one_shot_numpy(batch_sizes):
    rng = np.random.default_rng(sum(batch_sizes))
    # A large common offset is where the naive sum-of-squares formula loses precision.
    features = rng.normal(size=(sum(batch_sizes), 5)) * rng.uniform(0.1, 3, size=5) + 1e4
    stats = FeatureStatistics(dim=5)
    start = 0
    for size in batch_sizes:
        stats.update(torch.from_numpy(features[start : start + size]))
        start += size
    assert stats.count == features.shape[0]
    np.testing.assert_allclose(stats.mean, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(features, rowvar=False), rtol=1e-7, atol=1e-9)


def test_statistics_keep_features_save_and_load(tmp_path):
    features = torch.randn(13, 4)
    stats = FeatureStatistics(dim=4, extractor="demo", keep_features=True)
    stats.update(features[:5])
    stats.update(features[5:])
    torch.testing.assert_close(stats.features, features)
    path = tmp_path / "stats.npz"
    stats.save(path)
    loaded = FeatureStatistics.load(path)
    assert (loaded.count, loaded.extractor) == (13, "demo")
    np.testing.assert_allclose(loaded.covariance, stats.covariance, rtol=1e-12)
    loaded.update(torch.randn(3, 4))  # a loaded file with a count can be extended
    assert loaded.count == 16


def test_statistics_load_pytorch_fid_npz_and_errors(tmp_path):
    path = tmp_path / "pytorch_fid_stats.npz"
    np.savez(path, mu=np.zeros(3), sigma=np.eye(3))
    stats = FeatureStatistics.load(path)
    np.testing.assert_array_equal(stats.covariance, np.eye(3))
    assert "unknown" in stats.extractor
    with pytest.raises(ValueError, match="cannot be updated"):
        stats.update(torch.zeros(2, 3))
    assert FeatureStatistics.load(path, extractor="inception").extractor == "inception"
    ours = tmp_path / "ours.npz"
    FeatureStatistics.load(path, extractor="inception").save(ours)
    with pytest.raises(ValueError, match="not 'segmenter'"):
        FeatureStatistics.load(ours, extractor="segmenter")
    np.testing.assert_array_equal(FeatureStatistics.load(ours).covariance, np.eye(3))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        FeatureStatistics.load(tmp_path / "missing.npz")
    fresh = FeatureStatistics(dim=3)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        fresh.update(torch.zeros(2, 4))
    fresh.update(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="at least 2"):
        _ = fresh.covariance


def test_fid_from_statistics_refuses_different_extractors():
    a, b = FeatureStatistics(dim=2, extractor="inception"), FeatureStatistics(dim=2, extractor="segmenter")
    for stats in (a, b):
        stats.update(torch.randn(4, 2))
    with pytest.raises(ValueError, match="different feature extractors"):
        fid_from_statistics(a, b)


# --- KID ----------------------------------------------------------------------------------------


def direct_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """O(n^2) double loops straight from the definition, with k(a, b) = (a.b / d + 1)^3."""
    m, d = x.shape

    def kernel(a, b):
        return (float(a @ b) / d + 1.0) ** 3

    xx = sum(kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(kernel(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_direct_computation():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(7, 3)), rng.normal(loc=0.5, size=(7, 3))
    expected = direct_unbiased_mmd2(x, y)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    k = polynomial_kernel
    assert float(unbiased_mmd2(k(tx, tx), k(ty, ty), k(tx, ty))) == pytest.approx(expected, rel=1e-12)
    # A subset of the full size is a permutation of the whole set: the estimate is the same.
    result = kernel_inception_distance(x, y, subsets=3, subset_size=7)
    assert result.mean == pytest.approx(expected, rel=1e-12)
    assert result.std == pytest.approx(0.0, abs=1e-12)


def test_kid_near_zero_for_one_distribution_and_larger_when_shifted():
    generator = torch.Generator().manual_seed(5)
    real = torch.randn(400, 16, generator=generator)
    same = torch.randn(400, 16, generator=generator)
    shifted = torch.randn(400, 16, generator=generator) + 0.5
    kid_same = kernel_inception_distance(real, same, subsets=20, subset_size=200)
    kid_shifted = kernel_inception_distance(real, shifted, subsets=20, subset_size=200)
    assert abs(kid_same.mean) < 3 * kid_same.std + 1e-3
    assert kid_shifted.mean > 10 * abs(kid_same.mean)
    assert kid_shifted.mean > kid_shifted.std
    # reproducible with the same seed
    assert kernel_inception_distance(real, shifted, subsets=20, subset_size=200) == kid_shifted


def test_kid_subset_size_checks():
    real, fake = torch.randn(30, 4), torch.randn(20, 4)
    with pytest.raises(ValueError, match="subset_size=25"):
        kernel_inception_distance(real, fake, subset_size=25)
    assert kernel_inception_distance(real, fake, subsets=2, subset_size=None).subset_size == 20
    with pytest.raises(ValueError, match="feature dimensions"):
        kernel_inception_distance(real, torch.randn(20, 5), subset_size=None)


# --- PSNR and SSIM ----------------------------------------------------------------------------


def test_psnr_constant_offset_closed_form():
    target = torch.rand(3, 3, 9, 7) * 2 - 1
    offsets = torch.tensor([0.1, 0.02, 0.5]).view(3, 1, 1, 1)
    got = psnr(target + offsets, target, data_range=2.0)
    expected = 10 * torch.log10(4.0 / offsets.flatten().double() ** 2)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # scaling images and range together changes nothing
    torch.testing.assert_close(psnr((target + offsets) / 2, target / 2, data_range=1.0), got)
    assert torch.isinf(psnr(target, target)).all()


def numpy_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """SSIM of single-channel images by explicit Gaussian-weighted sums over every valid window."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("size", [(11, 11), (14, 12)])
def test_ssim_matches_explicit_window_computation(size):
    rng = np.random.default_rng(6)
    x = rng.uniform(size=(1, 1, *size))
    y = np.clip(x + rng.normal(scale=0.1, size=x.shape), 0, 1)
    got = ssim(torch.from_numpy(x), torch.from_numpy(y), data_range=1.0)
    assert float(got) == pytest.approx(numpy_ssim(x[0, 0], y[0, 0], 1.0), rel=1e-9)


def test_ssim_identical_is_one_and_noise_lowers_it():
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(2, 3, 24, 20, generator=generator) * 2 - 1
    torch.testing.assert_close(ssim(images, images), torch.ones(2, dtype=torch.float64))
    noise = torch.randn(images.shape, generator=generator)
    scores = [float(ssim((images + level * noise).clamp(-1, 1), images).mean()) for level in (0.05, 0.2, 0.8)]
    assert 1 > scores[0] > scores[1] > scores[2]
    torch.testing.assert_close(ssim(images + 0.1 * noise, images), ssim(images, images + 0.1 * noise))
    assert float(gaussian_window(11, 1.5).sum()) == pytest.approx(1.0)


def test_image_quality_rejects_bad_input():
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(torch.zeros(1, 3, 8, 30), torch.zeros(1, 3, 8, 30))
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="data_range"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), data_range=0)


# --- segmentation score -----------------------------------------------------------------------


def test_confusion_matrix_hand_computed_with_ignore_index():
    target = torch.tensor([0, 0, 1, 1, 2, 2, 255])
    prediction = torch.tensor([0, 1, 1, 1, 2, 0, 2])
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(prediction[:3], target[:3])  # accumulated over two batches
    cm.update(prediction[3:], target[3:])
    torch.testing.assert_close(cm.matrix, torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]]))
    score = cm.compute()
    # IoU_0 = 1 / (2 + 2 - 1), IoU_1 = 2 / (2 + 3 - 2), IoU_2 = 1 / (2 + 1 - 1)
    torch.testing.assert_close(score.per_class_iou, torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))
    assert score.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert score.pixel_accuracy == pytest.approx(4 / 6)
    assert score.mean_class_accuracy == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert score.pixels == 6


def test_confusion_matrix_ignore_index_inside_range_and_absent_classes():
    # ignore_index 0 is a class id ("unlabelled"): never scored, out of the mean; predicting it is a miss.
    target = torch.tensor([[0, 1, 1, 2]])
    prediction = torch.tensor([[1, 1, 0, 2]])
    score = ConfusionMatrix(4, ignore_index=0)
    score.update(prediction, target)
    result = score.compute()
    assert math.isnan(result.per_class_iou[0]) and math.isnan(result.per_class_iou[3])  # 3: nowhere at all
    assert result.per_class_iou[1] == pytest.approx(1 / 2) and result.per_class_iou[2] == pytest.approx(1.0)
    assert result.miou == pytest.approx(3 / 4)
    assert result.pixel_accuracy == pytest.approx(2 / 3)
    # a class predicted but absent from the ground truth counts with IoU 0
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 2]), torch.tensor([0, 0]))
    assert cm.compute().miou == pytest.approx((1 / 2 + 0) / 2)


def test_confusion_matrix_rejects_bad_ids():
    cm = ConfusionMatrix(3, ignore_index=255)
    with pytest.raises(ValueError, match="target contains class id 7"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="prediction contains class id 3"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer class ids"):
        cm.update(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="no non-ignored pixel"):
        cm.update(torch.tensor([0]), torch.tensor([255]))
        cm.compute()


def test_segmentation_score_with_oracle_resizes_logits_to_labels():
    semantic = torch.randint(0, 5, (3, 8, 8))
    semantic = semantic.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # (3, 16, 16), 2x2 blocks
    images = images_encoding(semantic)
    # Full-resolution oracle is perfect; a half-resolution one, upsampled, is still perfect on 2x2 blocks.
    for downsample in (1, 2):
        score = segmentation_score(OracleSegmenter(5, downsample=downsample), [(images, semantic)], num_classes=5)
        assert score.miou == pytest.approx(1.0) and score.pixel_accuracy == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\(B, 6, H, W\)"):
        segmentation_score(OracleSegmenter(5), [(images, semantic)], num_classes=6)


# --- FID Inception ------------------------------------------------------------------------------


def test_fid_inception_builds_and_gives_2048_features():
    net = FIDInceptionV3().eval()
    # torchvision's inception_v3 has 27,161,264 parameters; without its aux head (3,326,696) and with
    # the FID graph's 1008-way classifier (+16,392) that leaves 23,850,960.
    assert sum(p.numel() for p in net.parameters()) == 23_850_960
    state = net.state_dict()
    # a few names and shapes of the pytorch-fid weights file
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_5b.branch_pool.bn.running_var"].shape == (32,)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
    assert state["fc.weight"].shape == (1008, 2048)
    assert not any(key.startswith("AuxLogits") for key in state)
    with torch.no_grad():
        features = net(torch.rand(2, 3, 32, 40) * 2 - 1)  # resized to 299x299 inside
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert (features[0] - features[1]).abs().max() > 0


def test_tf_average_pool_excludes_padding():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    pooled = _tf_avg_pool(x)
    assert pooled[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)  # corner: mean of 4 real pixels
    assert pooled[0, 0, 1, 1] == pytest.approx(x[0, 0, :3, :3].mean())


def test_fid_inception_loads_state_dict_with_its_key_names(tmp_path, monkeypatch):
    torch.manual_seed(8)
    source = FIDInceptionV3().eval()
    for module in source.modules():  # non-trivial BatchNorm statistics, as in real weights
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    # Older files have no num_batches_tracked entries; they must load too.
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / FID_WEIGHTS_FILENAME
    torch.save(state, path)
    monkeypatch.setenv(FID_WEIGHTS_ENV, str(path))
    loaded = load_fid_inception()  # path from the environment variable
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for key, value in state.items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    source.resize_input = loaded.resize_input = False  # 75x75 is the smallest input; keeps the test fast
    images = torch.rand(1, 3, 75, 75) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), source(images), rtol=0, atol=0)
    # the same weights from a .safetensors export
    st_path = tmp_path / "fid_inception.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st_path))
    torch.testing.assert_close(load_fid_inception(st_path).state_dict()["fc.bias"], state["fc.bias"])


def test_fid_inception_missing_or_wrong_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=FID_WEIGHTS_FILENAME) as info:
        load_fid_inception()
    assert FID_WEIGHTS_ENV in str(info.value)
    missing = tmp_path / "nowhere" / FID_WEIGHTS_FILENAME
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_fid_inception(missing)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="unexpected keys"):
        load_fid_inception(wrong)


# --- feature extractors and FID end to end ------------------------------------------------------


def test_feature_extractor_checks_and_quantizes():
    seen = []

    def network(images):
        seen.append(images)
        return images.mean(dim=(2, 3), keepdim=True)  # (B, 3, 1, 1) is flattened

    extractor = FeatureExtractor(network, name="channel means", quantize=True)
    features = extractor(torch.full((2, 3, 4, 4), 0.3))
    assert features.shape == (2, 3)
    levels = (seen[0] + 1) * 127.5
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)  # 256 levels
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        extractor(torch.full((1, 3, 4, 4), 255.0))
    with pytest.raises(ValueError, match="must return"):
        FeatureExtractor(lambda x: x, name="identity")(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="name"):
        FeatureExtractor(network, name="")


def test_compute_fid_end_to_end_is_labelled():
    generator = torch.Generator().manual_seed(9)
    real = [torch.rand(16, 3, 16, 16, generator=generator) * 2 - 1 for _ in range(3)]
    other_real = [torch.rand(16, 3, 16, 16, generator=generator) * 2 - 1 for _ in range(3)]
    darker = [(batch - 0.6).clamp(-1, 1) for batch in other_real]
    extractor = tiny_conv_extractor()
    same = compute_fid(extractor, real, other_real)
    shifted = compute_fid(extractor, real, darker)
    assert shifted.fid > 5 * same.fid > 0
    assert same.feature_extractor == "random conv (test only)" and not same.comparable_to_published
    assert (same.num_real, same.num_fake) == (48, 48)


# --- small segmenter ----------------------------------------------------------------------------


def color_dataset(num: int, size: int = 16, seed: int = 0) -> list[dict]:
    """Samples whose class (1..3) is the brightest channel; class 0 is 'unlabelled' (ignored)."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(num):
        image = torch.rand(3, size, size, generator=generator) * 2 - 1
        semantic = image.argmax(dim=0) + 1  # (H, W) in 1..3
        present = torch.rand(size, size, generator=generator) > 0.1
        samples.append({"image": image, "labels": {"semantic": semantic}, "masks": {"semantic": present}, "meta": {}})
    return samples


def test_small_segmenter_trains_with_decreasing_loss_and_round_trips(tmp_path, one_thread):
    result = train_segmenter(
        color_dataset(16, size=12), num_classes=4, steps=30, ignore_index=0, width=8, depth=2, batch_size=4, lr=5e-3
    )
    losses = result.losses
    assert len(losses) == 30 and all(math.isfinite(loss) for loss in losses)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3])
    path = tmp_path / "segmenter.safetensors"
    save_segmenter(result.model, path, metadata=result.config)
    loaded = load_segmenter(path)
    assert loaded.metadata["steps"] == 30 and loaded.num_classes == 4
    images = torch.rand(2, 3, 13, 18) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), result.model(images), rtol=0, atol=0)
        assert loaded.pooled_features(images).shape == (2, loaded.feature_dim)


def test_segmenter_io_and_training_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_segmenter(tmp_path / "nope.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other))
    with pytest.raises(ValueError, match="not a SmallSegmenter file"):
        load_segmenter(other)
    with pytest.raises(ValueError, match="no ignore_index"):
        train_segmenter(color_dataset(4), num_classes=4, steps=1, width=4, depth=1)
    pairs = [(torch.zeros(2, 3, 8, 8), torch.full((2, 8, 8), 9))]
    with pytest.raises(ValueError, match="class id 9"):
        train_segmenter(pairs, num_classes=4, steps=1, width=4, depth=1)
    with pytest.raises(ValueError, match="steps"):
        train_segmenter(pairs, num_classes=4, steps=0)
    with pytest.raises(ValueError, match="no batch"):
        train_segmenter([], num_classes=4, steps=1)
    with pytest.raises(ValueError, match="width"):
        SmallSegmenter(3, width=0)


def test_network_files_read_headers_written_field_by_field(tmp_path):
    """Files whose header holds plain ``str(int)`` and JSON label lists (as first written) still load."""
    from safetensors import safe_open

    from examples.metrics import LabelEstimator, load_label_estimator, save_label_estimator

    torch.manual_seed(0)
    reference = LabelEstimator(5, labels=("semantic", "edge"), width=4, depth=2)
    tensors = {key: value.contiguous() for key, value in reference.state_dict().items()}
    header = {
        "format": "label_merge.examples.LabelEstimator",
        "num_classes": "5",
        "labels": '["semantic", "edge"]',
        "width": "4",
        "depth": "2",
        "extra": '{"steps": 3}',
    }
    save_file(tensors, str(tmp_path / "estimator.safetensors"), metadata=header)
    loaded = load_label_estimator(tmp_path / "estimator.safetensors")
    assert (loaded.num_classes, loaded.labels, loaded.width, loaded.depth) == (5, ("semantic", "edge"), 4, 2)
    assert loaded.metadata == {"steps": 3} and not loaded.training
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    # The writer still produces exactly that header.
    save_label_estimator(reference, tmp_path / "again.safetensors", metadata={"steps": 3})
    with safe_open(str(tmp_path / "again.safetensors"), framework="pt") as handle:
        assert handle.metadata() == header
    save_file({}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(ValueError, match="not a LabelEstimator file"):
        load_label_estimator(tmp_path / "empty.safetensors")
    with pytest.raises(FileNotFoundError, match="label estimator weights not found"):
        load_label_estimator(tmp_path / "nope.safetensors")


def test_cycle_batches_repeats_epochs_and_fails_on_an_empty_one():
    from examples.metrics.samples import cycle_batches

    batches = cycle_batches(range(3))
    assert [next(batches) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    one_shot = cycle_batches(iter([5]), source="the scenes")
    assert next(one_shot) == 5
    with pytest.raises(ValueError, match=r"the scenes yielded no batch \(epoch 1\)"):
        next(one_shot)


@pytest.mark.parametrize("module", ["network_files", "samples"])
def test_docstring_examples_of_helpers(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"examples.metrics.{module}"))
    assert result.attempted > 0 and result.failed == 0


def test_split_batch_marks_missing_pixels_ignored():
    batch = {
        "image": torch.zeros(1, 3, 2, 2),
        "labels": {"semantic": torch.tensor([[[1, 2], [3, 1]]])},
        "masks": {"semantic": torch.tensor([[[True, False], [True, True]]])},
    }
    _, semantic = split_batch(batch, ignore_index=255)
    torch.testing.assert_close(semantic, torch.tensor([[[1, 255], [3, 1]]]))
    with pytest.raises(KeyError, match="depth"):
        split_batch(batch, label_name="depth")


# --- evaluator ----------------------------------------------------------------------------------


def test_generation_evaluator_on_sample_batches():
    generator = torch.Generator().manual_seed(10)
    evaluator = GenerationEvaluator(
        feature_extractor=tiny_conv_extractor(),
        segmenter=OracleSegmenter(4),
        segmenter_name="oracle",
        num_classes=4,
        ignore_index=0,
        kid_subsets=5,
    )
    psnr_values = []
    for _ in range(3):
        semantic = torch.randint(1, 4, (4, 16, 16), generator=generator)
        real = images_encoding(semantic)
        real[:, 1:] = torch.rand(4, 2, 16, 16, generator=generator) * 2 - 1
        fake = (real + 0.05 * torch.randn(real.shape, generator=generator)).clamp(-1, 1)
        fake[:, 0] = real[:, 0]  # the oracle reads channel 0: keep the class code intact
        mask = torch.rand(4, 16, 16, generator=generator) > 0.2
        batch = {"image": real, "labels": {"semantic": semantic}, "masks": {"semantic": mask}}
        evaluator.update_from_batch(fake, batch)
        psnr_values.append(psnr((fake + 1) / 2, (real + 1) / 2, data_range=1.0))
    results = evaluator.compute()
    assert results["feature_extractor"] == "random conv (test only)" and results["comparable_to_published"] is False
    assert results["num_real"] == results["num_fake"] == 12 and results["kid_subset_size"] == 12
    assert results["fid"] >= 0 and math.isfinite(results["kid_mean"])
    assert results["psnr"] == pytest.approx(float(torch.cat(psnr_values).mean()))
    assert 0 < results["ssim"] < 1
    assert results["segmenter"] == "oracle" and results["miou"] == pytest.approx(1.0)
    assert results["pixel_accuracy"] == pytest.approx(1.0)


def test_generation_evaluator_argument_checks():
    stats = FeatureStatistics(dim=8, extractor="random conv (test only)")
    with pytest.raises(ValueError, match="keep_features"):
        GenerationEvaluator(feature_extractor=tiny_conv_extractor(), real_statistics=stats)
    with pytest.raises(ValueError, match="not 'other'"):
        GenerationEvaluator(feature_extractor=tiny_conv_extractor(name="other"), real_statistics=stats, kid=False)
    with pytest.raises(ValueError, match="num_classes"):
        GenerationEvaluator(segmenter=OracleSegmenter(3))
