"""Label normalisation, the optional concept LayerNorm, and label names that cannot be used."""

import pytest
import torch
from helpers import SPECS, make_labels, make_masks

from label_merge import CLAM, TLAM, LabelSpec, NaiveConcat

SHIFT = {"depth": (3.0,), "normal": (0.5, -1.0, 2.0), "curvature": (0.0, 0.25)}
SCALE = {"depth": (2.0,), "normal": (1.0, 4.0, 0.5), "curvature": (8.0, 0.125)}


def normalised_specs():
    return {
        name: spec if spec.is_categorical else LabelSpec.continuous(spec.channels, shift=SHIFT[name], scale=SCALE[name])
        for name, spec in SPECS.items()
    }


def by_hand(labels):
    """The labels as a merger should see them: ``(x - shift) / scale`` per channel."""
    out = dict(labels)
    for name in SHIFT:
        shift = torch.tensor(SHIFT[name]).view(1, -1, 1, 1)
        scale = torch.tensor(SCALE[name]).view(1, -1, 1, 1)
        out[name] = (labels[name] - shift) / scale
    return out


def twin(cls, specs, **kw):
    torch.manual_seed(0)
    return cls(specs, dim=12, **kw)


MERGERS = [
    (TLAM, dict(depth=2, heads=3, backend="torch", drop="zero")),
    (TLAM, dict(depth=2, heads=3, backend="torch", drop="exclude")),
    (CLAM, dict(depth=2, drop="zero")),
]


@pytest.mark.parametrize(("cls", "kw"), MERGERS)
def test_normalised_merger_equals_identity_merger_on_normalised_labels(cls, kw):
    plain, normed = twin(cls, SPECS, **kw), twin(cls, normalised_specs(), **kw)
    labels, masks = make_labels(), make_masks()
    expected = plain(by_hand(labels), masks)
    torch.testing.assert_close(normed(labels, masks), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("cls", "kw"), MERGERS)
def test_missing_positions_stay_zero_input_after_normalisation(cls, kw):
    # A missing label is a zero input after normalisation, not (0 - shift) / scale.
    plain, normed = twin(cls, SPECS, **kw), twin(cls, normalised_specs(), **kw)
    labels, masks = make_labels(), make_masks()
    for name in SHIFT:
        labels[name][~masks[name].unsqueeze(1).expand_as(labels[name])] = float("nan")
    out = normed(labels, masks)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, plain(by_hand(labels), masks), rtol=1e-5, atol=1e-6)
    only_semantic = {"semantic": labels["semantic"]}
    torch.testing.assert_close(normed(only_semantic), plain(only_semantic), rtol=0, atol=0)


def test_naive_concat_copies_normalised_values():
    specs = normalised_specs()
    labels, masks = make_labels(), make_masks()
    out = NaiveConcat(specs)(labels, masks)
    # Channel layout: semantic one-hot (5), depth (1), normal (3), curvature (2), presence (4).
    depth_channel = out[:, 5]
    want = torch.where(masks["depth"], (labels["depth"][:, 0] - 3.0) / 2.0, 0.0)
    torch.testing.assert_close(depth_channel, want)


def test_normalisation_lives_in_the_state_dict():
    source = twin(TLAM, normalised_specs(), depth=1, heads=3, backend="torch")
    other = {
        n: s if s.is_categorical else LabelSpec.continuous(s.channels, shift=9.0, scale=0.5) for n, s in SPECS.items()
    }
    target = twin(TLAM, other, depth=1, heads=3, backend="torch")
    state = source.state_dict()
    assert torch.equal(state["normalize.shift_normal"], torch.tensor(SHIFT["normal"]))
    assert torch.equal(state["normalize.scale_curvature"], torch.tensor(SCALE["curvature"]))
    target.load_state_dict(state)
    labels = make_labels()
    torch.testing.assert_close(target(labels), source(labels), rtol=0, atol=0)


def test_identity_specs_add_no_state():
    # Without shift/scale the state_dict is what it was before normalisation existed.
    keys = twin(TLAM, SPECS, depth=1, heads=3).state_dict().keys()
    assert not [k for k in keys if k.startswith("normalize.")]
    assert NaiveConcat(SPECS).state_dict() == {}


@pytest.mark.parametrize("cls", [TLAM, CLAM])
def test_concept_norm_gives_unit_scale_per_pixel(cls):
    kw = dict(heads=3) if cls is TLAM else {}
    merger = twin(cls, SPECS, concept_norm=True, **kw)
    assert "concept_norm.weight" in merger.state_dict()
    c = merger(make_labels(), make_masks())  # (B, d, H, W)
    torch.testing.assert_close(c.mean(dim=1), torch.zeros_like(c[:, 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        c.var(dim=1, unbiased=False), torch.ones_like(c[:, 0]), atol=0.05, rtol=0
    )  # eps=1e-5 in LN
    assert twin(cls, SPECS, **kw).concept_norm is None  # off by default


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(shift=(1.0, 2.0)), "one value per channel"),
        (dict(scale=0.0), "non-zero"),
        (dict(scale=float("inf")), "finite"),
        (dict(shift="a"), "finite|number"),
    ],
)
def test_bad_normalisation_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LabelSpec.continuous(3, **kwargs)


def test_categorical_labels_take_no_normalisation():
    with pytest.raises(ValueError, match="continuous"):
        LabelSpec("categorical", 4, shift=1.0)


def test_spec_dict_round_trip():
    for spec in [*normalised_specs().values(), LabelSpec.continuous(2), LabelSpec.categorical(7, ignore_index=255)]:
        assert LabelSpec.from_dict(spec.to_dict()) == spec
    assert LabelSpec.continuous(2, scale=3).scale == (3.0, 3.0)


@pytest.mark.parametrize("name", ["type", "keys", "float", "training", "update", "forward", "items"])
@pytest.mark.parametrize("cls", [TLAM, CLAM, NaiveConcat])
def test_label_names_that_shadow_module_attributes_are_refused(cls, name):
    with pytest.raises(ValueError, match=f"label name '{name}'"):
        cls({name: LabelSpec.continuous(1)}, **({} if cls is NaiveConcat else {"dim": 6}))


def test_ordinary_names_still_work():
    specs = {"typed": LabelSpec.continuous(1), "depth_keys": LabelSpec.continuous(1, scale=2.0)}
    m = TLAM(specs, dim=6, heads=2)
    assert m({"typed": torch.rand(1, 1, 2, 2)}).shape == (1, 6, 2, 2)


def test_synthetic_declared_normalisation_matches_its_statistics():
    from examples.datasets.statistics import label_statistics
    from examples.datasets.synthetic import SyntheticDataset

    ds = SyntheticDataset(40, resolution=24, seed=7, supersample=1, labels=["depth", "curvature"])
    stats = label_statistics(ds)
    for name in ("depth", "curvature"):
        spec = ds.label_specs[name]
        mean, std = stats[name]
        # Declared from 300 scenes; 40 other scenes agree within sampling error.
        assert all(abs(m - s) < 0.35 * sc for m, s, sc in zip(mean, spec.shift, spec.scale, strict=True))
        assert all(0.6 < s / sc < 1.6 for s, sc in zip(std, spec.scale, strict=True))


# ---------------------------------------------------------------- float32 storage and precision


@pytest.mark.parametrize(
    "kwargs", [dict(shift=1e300), dict(shift=-1e39), dict(scale=1e300), dict(scale=1e-300), dict(scale=1e-39)]
)
def test_shift_and_scale_must_survive_float32(kwargs):
    # float64 holds them, but the float32 buffers would become inf or 0 and every present pixel NaN or 0.
    with pytest.raises(ValueError, match="float32"):
        LabelSpec.continuous(1, **kwargs)


def test_scale_given_as_a_dict_is_refused():
    # A dict is iterable: it used to be read as its keys (1.0, 2.0).
    with pytest.raises(ValueError, match=r"scale must be a number or a sequence of 2 numbers.*got a dict"):
        LabelSpec.continuous(2, scale={1: 10.0, 2: 20.0})


def test_tensor_and_numpy_numbers_are_accepted():
    np = pytest.importorskip("numpy")
    assert LabelSpec.continuous(1, shift=torch.tensor(3.0)).shift == (3.0,)
    assert LabelSpec.continuous(2, scale=np.float32(2)).scale == (2.0, 2.0)
    assert LabelSpec.continuous(2, shift=torch.tensor([1.0, -2.0])).shift == (1.0, -2.0)
    assert LabelSpec.continuous(3, scale=np.array([1.0, 2.0, 4.0])).scale == (1.0, 2.0, 4.0)
    with pytest.raises(ValueError, match=r"shift must be a number or 2 numbers, got an array of shape \(2, 2\)"):
        LabelSpec.continuous(2, shift=torch.ones(2, 2))
    with pytest.raises(ValueError, match="shift must hold numbers only"):
        LabelSpec.continuous(2, shift=[1.0, "a"])


def merger_on_depth(shift, scale):
    torch.manual_seed(0)
    specs = {"depth": LabelSpec.continuous(1, shift=shift, scale=scale)}
    return TLAM(specs, dim=6, depth=1, heads=2, backend="torch")


def test_float16_labels_are_normalised_in_float32():
    # 7e4 is beyond float16's largest value (65504): normalising in float16 gave inf, then NaN.
    merger = merger_on_depth(7e4, 1e4)
    depth = torch.linspace(6e4, 6.5e4, 12).reshape(1, 1, 3, 4)
    out16 = merger({"depth": depth.half()})
    assert torch.isfinite(out16).all()
    torch.testing.assert_close(out16, merger({"depth": depth.half().float()}), rtol=0, atol=0)


def test_a_half_merger_keeps_its_normalisation_in_float32():
    # In float16, a scale of 1e-8 is 0: every present pixel became inf, and the concept NaN.
    merger = merger_on_depth(0.0, 1e-8)
    expected = merger({"depth": torch.full((1, 1, 2, 2), 2e-4)})
    merger.half()
    assert merger.normalize.scale_depth.dtype == torch.float32
    assert merger.normalize.scale_depth.item() == torch.tensor(1e-8).item()
    out = merger({"depth": torch.full((1, 1, 2, 2), 2e-4, dtype=torch.float16)})
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, rtol=0.02, atol=0.02)


# ---------------------------------------------------------------- loading state dicts


def test_a_state_dict_without_normalisation_gets_a_hint():
    # A state_dict saved before normalisation existed (label-merge 0.1.0) has no normalize.* keys.
    old = twin(TLAM, SPECS, depth=1, heads=3, backend="torch").state_dict()
    normalised = twin(TLAM, normalised_specs(), depth=1, heads=3, backend="torch")
    with pytest.raises(
        RuntimeError, match=r"no normalisation for label\(s\) \['depth', 'normal', 'curvature'\].*0\.1\.0"
    ):
        normalised.load_state_dict(old)
    normalised.load_state_dict(old, strict=False)  # keeps its own shift and scale, as the hint says
    assert normalised.specs == normalised_specs()
    plain = twin(TLAM, SPECS, depth=1, heads=3, backend="torch")
    with pytest.raises(RuntimeError, match=r"normalises label\(s\) \['curvature', 'depth', 'normal'\]"):
        plain.load_state_dict(normalised.state_dict())


@pytest.mark.parametrize("strict", [True, False])
def test_specs_show_the_loaded_normalisation(strict):
    source = twin(TLAM, normalised_specs(), depth=1, heads=3, backend="torch")
    other = {
        n: s if s.is_categorical else LabelSpec.continuous(s.channels, shift=9.0, scale=0.5) for n, s in SPECS.items()
    }
    target = twin(TLAM, other, depth=1, heads=3, backend="torch")
    target.load_state_dict(source.state_dict(), strict=strict)
    assert target.specs == source.specs == normalised_specs()
    assert target.label_names == list(SPECS)
    # A loaded identity (shift 0, scale 1) reads as no shift or scale.
    target.load_state_dict({**source.state_dict(), "normalize.shift_depth": torch.zeros(1)}, strict=strict)
    assert target.specs["depth"] == LabelSpec.continuous(1, scale=SCALE["depth"])


def test_a_model_holding_a_merger_can_ask_why_its_normalisation_does_not_load():
    from torch import nn

    from label_merge.normalization import normalization_load_hints

    model = nn.ModuleDict({"merger": twin(TLAM, normalised_specs(), depth=1, heads=3, backend="torch")})
    old = {f"merger.{k}": v for k, v in twin(TLAM, SPECS, depth=1, heads=3, backend="torch").state_dict().items()}
    (hint,) = normalization_load_hints(model, old)
    assert "no normalisation for label(s) ['depth', 'normal', 'curvature'] (merger.normalize.shift_<name>" in hint
    assert normalization_load_hints(model, model.state_dict()) == []
