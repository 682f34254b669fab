"""Hinge GAN loss, feature matching and the VGG19 perceptual loss (random weights in torchvision's format)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.losses import (
    VGG19_ENV_VAR,
    VGG19Features,
    VGGPerceptualLoss,
    feature_matching_loss,
    hinge_loss_d_fake,
    hinge_loss_d_real,
    hinge_loss_g,
    load_vgg19_features,
    resolve_vgg19_path,
)

# --- hinge ----------------------------------------------------------------------------------


def test_hinge_known_values_two_scales():
    s0 = torch.tensor([-2.0, -0.5, 0.5, 2.0])
    s1 = torch.tensor([[0.0, 3.0]])
    outputs = [[torch.randn(3), s0], [torch.randn(5), s1]]  # features are ignored, logits last
    # D real: mean(relu(1 - x)): scale 0 = (3 + 1.5 + 0.5 + 0) / 4 = 1.25, scale 1 = (1 + 0) / 2 = 0.5
    assert hinge_loss_d_real(outputs).item() == pytest.approx((1.25 + 0.5) / 2)
    # D fake: mean(relu(1 + x)): scale 0 = (0 + 0.5 + 1.5 + 3) / 4 = 1.25, scale 1 = (1 + 4) / 2 = 2.5
    assert hinge_loss_d_fake(outputs).item() == pytest.approx((1.25 + 2.5) / 2)
    # G: -mean(x): scale 0 = 0, scale 1 = -1.5
    assert hinge_loss_g(outputs).item() == pytest.approx((0 - 1.5) / 2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(-5, 5), min_size=1, max_size=6), min_size=1, max_size=3))
def test_hinge_matches_definition(scales):
    outputs = [torch.tensor(v, dtype=torch.float64) for v in scales]  # bare logits per scale
    n = len(scales)
    real = sum(sum(max(0.0, 1 - x) for x in v) / len(v) for v in scales) / n
    fake = sum(sum(max(0.0, 1 + x) for x in v) / len(v) for v in scales) / n
    gen = sum(-sum(v) / len(v) for v in scales) / n
    assert hinge_loss_d_real(outputs).item() == pytest.approx(real, abs=1e-9)
    assert hinge_loss_d_fake(outputs).item() == pytest.approx(fake, abs=1e-9)
    assert hinge_loss_g(outputs).item() == pytest.approx(gen, abs=1e-9)


def test_hinge_errors():
    with pytest.raises(ValueError, match="empty"):
        hinge_loss_g([])
    with pytest.raises(ValueError, match="scale 1"):
        hinge_loss_g([[torch.zeros(1)], []])


# --- feature matching -----------------------------------------------------------------------


def test_feature_matching_known_values():
    fake = [[torch.zeros(1, 2, 4, 4)] * 4 + [torch.full((1, 1, 3, 3), 7.0)] for _ in range(2)]
    real = [[torch.ones(1, 2, 4, 4)] * 4 + [torch.zeros(1, 1, 3, 3)] for _ in range(2)]
    # 2 scales x 4 features, each L1 = 1, times 10 / 2; the logits (7 vs 0) are ignored.
    assert feature_matching_loss(fake, real).item() == pytest.approx(40.0)
    assert feature_matching_loss(fake, real, lambda_feat=1.0).item() == pytest.approx(4.0)
    # L1 is a mean over elements: |0 - 3| on half of the entries, 0 elsewhere -> 1.5 per map.
    half = torch.zeros(1, 2, 4, 4)
    half[:, 0] = 3.0
    single = feature_matching_loss([[torch.zeros(1, 2, 4, 4), torch.zeros(1)]], [[half, torch.zeros(1)]])
    assert single.item() == pytest.approx(1.5 * 10 / 1)


def test_feature_matching_detaches_real():
    f = torch.zeros(1, 2, 3, 3, requires_grad=True)
    r = torch.ones(1, 2, 3, 3, requires_grad=True)
    feature_matching_loss([[f, torch.zeros(1)]], [[r, torch.zeros(1)]]).backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert r.grad is None


def test_feature_matching_errors():
    a = [[torch.zeros(1, 2, 3, 3), torch.zeros(1)]]
    with pytest.raises(ValueError, match="number of scales"):
        feature_matching_loss(a, a + a)
    with pytest.raises(ValueError, match="scale 0: fake has 2 maps, real has 3"):
        feature_matching_loss(a, [[torch.zeros(1, 2, 3, 3)] * 2 + [torch.zeros(1)]])
    with pytest.raises(ValueError, match="shape"):
        feature_matching_loss(a, [[torch.zeros(1, 2, 3, 4), torch.zeros(1)]])


# --- VGG19 ----------------------------------------------------------------------------------

# torchvision's vgg19().features: (index, in, out) of every conv; ReLU after each, max pools at 4, 9, 18, 27, 36.
TORCHVISION_VGG19_CONVS = [
    (0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256), (16, 256, 256),
    (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512),
    (28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512),
]  # fmt: skip
POOLS = (4, 9, 18, 27, 36)


def random_torchvision_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with torchvision's vgg19 keys and shapes (random values, tiny classifier stand-ins)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, cin, cout in TORCHVISION_VGG19_CONVS:
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        state[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.01
    state["classifier.0.weight"] = torch.zeros(2, 2)  # real files have (4096, 25088); ignored either way
    state["classifier.0.bias"] = torch.zeros(2)
    return state


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    state = random_torchvision_state_dict()
    torch.save(state, path)
    return path, state


def reference_relus(x: torch.Tensor, state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """relu1_1 .. relu5_1 computed functionally from the state dict, following torchvision's indices."""
    outs = []
    taps = {1, 6, 11, 20, 29}  # ReLU indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
    convs = {i for i, _, _ in TORCHVISION_VGG19_CONVS}
    for idx in range(30):
        if idx in convs:
            x = F.conv2d(x, state[f"features.{idx}.weight"], state[f"features.{idx}.bias"], padding=1)
        elif idx in POOLS:
            x = F.max_pool2d(x, 2)
        else:
            x = F.relu(x)
        if idx in taps:
            outs.append(x)
    return outs


def test_vgg19_features_layout_matches_torchvision():
    vgg = VGG19Features()
    assert len(vgg.features) == 37
    expected_keys = {f"features.{i}.{p}" for i, _, _ in TORCHVISION_VGG19_CONVS for p in ("weight", "bias")}
    assert set(vgg.state_dict()) == expected_keys
    for i, cin, cout in TORCHVISION_VGG19_CONVS:
        assert vgg.features[i].weight.shape == (cout, cin, 3, 3)
    for i in POOLS:
        assert isinstance(vgg.features[i], torch.nn.MaxPool2d)
    assert sum(p.numel() for p in vgg.parameters()) == 20_024_384  # torchvision vgg19 features


def test_vgg_loads_torchvision_file_and_matches_functional_reference(vgg_file):
    path, state = vgg_file
    vgg = load_vgg19_features(path)
    assert not vgg.training and not any(p.requires_grad for p in vgg.parameters())
    torch.manual_seed(3)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        got = vgg(x)
    ref = reference_relus(x, state)
    assert [o.shape[1:] for o in got] == [(64, 32, 48), (128, 16, 24), (256, 8, 12), (512, 4, 6), (512, 2, 3)]
    for a, b in zip(got, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_vgg_loss_value_and_gradients(vgg_file, recwarn):
    path, state = vgg_file
    loss_fn = VGGPerceptualLoss(path, lambda_vgg=10.0)
    assert loss_fn.enabled and not recwarn.list
    torch.manual_seed(4)
    fake = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    loss = loss_fn(fake, real)
    with torch.no_grad():
        rf, rr = reference_relus(fake, state), reference_relus(real, state)
    weights = [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0]
    expected = 10.0 * sum(w * (a - b).abs().mean() for w, a, b in zip(weights, rf, rr, strict=True))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_fn.parameters())
    assert loss_fn(real, real).item() == 0.0
    loss_fn.train()
    assert not loss_fn.vgg.training


def test_vgg_path_from_environment(vgg_file, monkeypatch):
    path, _ = vgg_file
    monkeypatch.setenv(VGG19_ENV_VAR, str(path))
    assert resolve_vgg19_path() == path
    assert VGGPerceptualLoss().enabled
    assert resolve_vgg19_path("/elsewhere/v.pth").as_posix() == "/elsewhere/v.pth"  # argument wins


def test_vgg_off_without_file_warns_once_and_returns_zero(monkeypatch):
    monkeypatch.delenv(VGG19_ENV_VAR, raising=False)
    with pytest.warns(UserWarning, match=VGG19_ENV_VAR) as record:
        loss_fn = VGGPerceptualLoss()
    assert len(record) == 1 and "\n" not in str(record[0].message)
    assert not loss_fn.enabled
    fake = torch.rand(1, 3, 16, 16, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warning per call
        for _ in range(2):
            value = loss_fn(fake, torch.rand(1, 3, 16, 16))
            assert value.shape == () and value.item() == 0.0


def test_vgg_missing_file_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "vgg19-dcbb9e9d.pth"
    with pytest.raises(FileNotFoundError, match="nowhere/vgg19-dcbb9e9d.pth"):
        VGGPerceptualLoss(missing)


def test_vgg_wrong_keys_or_shapes_are_named(tmp_path):
    state = random_torchvision_state_dict(seed=1)
    bad = dict(state)
    del bad["features.34.weight"]
    p = tmp_path / "missing_key.pth"
    torch.save(bad, p)
    with pytest.raises(ValueError, match=r"missing_key\.pth.*features\.34\.weight"):
        load_vgg19_features(p)

    bad = dict(state, **{"features.3.weight": torch.zeros(1)})  # 3 is a ReLU in torchvision
    p = tmp_path / "extra_key.pth"
    torch.save(bad, p)
    with pytest.raises(ValueError, match=r"extra_key\.pth.*unexpected keys \['features\.3\.weight'\]"):
        load_vgg19_features(p)

    bad = dict(state, **{"features.5.weight": torch.zeros(128, 32, 3, 3)})
    p = tmp_path / "bad_shape.pth"
    torch.save(bad, p)
    with pytest.raises(
        ValueError,
        match=r"bad_shape\.pth: features\.5\.weight has shape \(128, 32, 3, 3\), "
        r"expected \(128, 64, 3, 3\)",
    ):
        load_vgg19_features(p)

    p = tmp_path / "not_a_dict.pth"
    torch.save([1, 2, 3], p)
    with pytest.raises(ValueError, match=r"not_a_dict\.pth must hold a state dict"):
        load_vgg19_features(p)

    p = tmp_path / "garbage.pth"
    p.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"could not read VGG19 weights from .*garbage\.pth"):
        load_vgg19_features(p)


def test_vgg_input_shape_error(vgg_file):
    loss_fn = VGGPerceptualLoss(vgg_file[0])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        loss_fn(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 8))
