"""label_merge.diffusers: TLAM as the condition encoder of a diffusers ControlNet."""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers_pipelines import tiny_unet
from helpers import SPECS, make_labels, make_masks

from label_merge import pack_labels
from label_merge.label_dicts import packed_channels

H = W = 32  # image size; latents are 4x4 with the factor 8


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_core_package_never_imports_diffusers():
    result = run_python("import sys, label_merge; print('diffusers' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_clear_import_error_without_diffusers():
    # sys.modules[name] = None makes `import name` fail, as if the package were not installed.
    result = run_python("import sys; sys.modules['diffusers'] = None; import label_merge.diffusers")
    assert result.returncode != 0
    assert 'pip install "label-merge[diffusers]"' in result.stderr


@pytest.fixture(scope="module")
def lm_diffusers():
    pytest.importorskip("diffusers")
    import label_merge.diffusers as module

    return module


@pytest.fixture(scope="module")
def unet(lm_diffusers):
    torch.manual_seed(0)
    return tiny_unet(H // 8)


def make_controlnet(lm_diffusers, unet, resolution="latent", **config):
    torch.manual_seed(1)
    return lm_diffusers.TLAMControlNetModel.from_unet(
        unet,
        SPECS,
        merger_dim=12,
        merger_depth=1,
        merger_heads=3,
        merger_resolution=resolution,
        conditioning_embedding_out_channels=(4, 4, 4, 8),
        **config,
    )


def perturb_zero_convs(controlnet, scale=0.1, condition_encoder=True):
    """Move the zero-initialised convolutions off zero, so the condition reaches the output."""
    g = torch.Generator().manual_seed(2)
    convs = [controlnet.controlnet_mid_block, *controlnet.controlnet_down_blocks]
    if condition_encoder:
        convs.append(controlnet.controlnet_cond_embedding.conv_out)
    with torch.no_grad():
        for conv in convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * scale)


def inputs(B=2):
    g = torch.Generator().manual_seed(3)
    return torch.randn(B, 4, H // 8, W // 8, generator=g), torch.tensor(500), torch.zeros(B, 1, 8)


def residuals(controlnet, **condition):
    sample, t, text = inputs()
    out = controlnet(sample, t, text, **condition)
    return [*out.down_block_res_samples, out.mid_block_res_sample]


def test_controlnet_copies_the_unet_and_derives_conditioning_channels(lm_diffusers, unet):
    controlnet = make_controlnet(lm_diffusers, unet)
    assert controlnet.config.conditioning_channels == packed_channels(SPECS)
    assert torch.equal(controlnet.down_blocks[0].resnets[0].conv1.weight, unet.down_blocks[0].resnets[0].conv1.weight)
    assert list(controlnet.label_specs) == list(SPECS)
    assert controlnet.merger.out_channels == 12


@pytest.mark.parametrize("resolution", ["latent", "image"])
def test_forward_backward_through_the_unet(lm_diffusers, unet, resolution):
    controlnet = make_controlnet(lm_diffusers, unet, resolution)
    labels, masks = make_labels(H=H, W=W), make_masks(H=H, W=W)
    sample, t, text = inputs()
    out = controlnet(sample, t, text, labels=labels, masks=masks)
    prediction = unet(
        sample,
        t,
        text,
        down_block_additional_residuals=out.down_block_res_samples,
        mid_block_additional_residual=out.mid_block_res_sample,
    ).sample
    assert prediction.shape == sample.shape
    controlnet.zero_grad()
    prediction.square().mean().backward()
    # At initialisation only ControlNet's output zero convolutions learn; everything behind them,
    # the condition encoder's zero convolution and TLAM included, sees zero gradients by design.
    assert controlnet.controlnet_mid_block.weight.grad.abs().sum() > 0
    assert not controlnet.controlnet_cond_embedding.conv_out.weight.grad.any()
    assert all(p.grad is None or not p.grad.any() for p in controlnet.merger.parameters())


def merger_gradients(controlnet, labels, masks):
    controlnet.zero_grad()
    sum(r.square().sum() for r in residuals(controlnet, labels=labels, masks=masks)).backward()
    return {name: p.grad for name, p in controlnet.merger.named_parameters()}


@pytest.mark.parametrize("resolution", ["latent", "image"])
def test_gradients_reach_tlam_once_the_zero_convs_moved(lm_diffusers, unet, resolution):
    controlnet = make_controlnet(lm_diffusers, unet, resolution)
    labels, masks = make_labels(H=H, W=W), make_masks(H=H, W=W)
    conv_out = controlnet.controlnet_cond_embedding.conv_out
    # Output zero convolutions moved (one optimiser step): the encoder's conv_out learns, TLAM not yet.
    perturb_zero_convs(controlnet, condition_encoder=False)
    grads = merger_gradients(controlnet, labels, masks)
    assert conv_out.weight.grad.abs().sum() > 0
    assert all(g is None or not g.any() for g in grads.values())
    # The encoder's conv_out moved too (a second step): now TLAM learns.
    perturb_zero_convs(controlnet)
    grads = merger_gradients(controlnet, labels, masks)
    for name in SPECS:
        assert grads[f"proj.{name}.weight"].abs().sum() > 0, name
    assert grads["label_embed"].abs().sum() > 0
    assert grads["blocks.0.attn.qkv.weight"].abs().sum() > 0


@pytest.mark.parametrize("resolution", ["latent", "image"])
def test_values_at_missing_positions_never_change_the_output(lm_diffusers, unet, resolution):
    controlnet = make_controlnet(lm_diffusers, unet, resolution).eval()
    perturb_zero_convs(controlnet)
    labels, masks = make_labels(H=H, W=W), make_masks(H=H, W=W, p=0.5)
    poisoned = {}
    for name, x in labels.items():
        missing = ~masks[name]
        if SPECS[name].is_categorical:
            poisoned[name] = torch.where(missing, 77, x)
        else:
            poisoned[name] = torch.where(missing.unsqueeze(1), torch.full_like(x, float("nan")), x)
    with torch.no_grad():
        clean = residuals(controlnet, labels=labels, masks=masks)
        dirty = residuals(controlnet, labels=poisoned, masks=masks)
        # Sanity: a present value does change it.
        changed = dict(labels, depth=torch.where(masks["depth"].unsqueeze(1), labels["depth"] + 1, labels["depth"]))
        moved = residuals(controlnet, labels=changed, masks=masks)
    for a, b in zip(clean, dirty, strict=True):
        assert torch.equal(a, b)
        assert torch.isfinite(b).all()
    assert any(not torch.equal(a, b) for a, b in zip(clean, moved, strict=True))


def test_packed_condition_equals_labels_dict(lm_diffusers, unet):
    controlnet = make_controlnet(lm_diffusers, unet).eval()
    perturb_zero_convs(controlnet)
    labels, masks = make_labels(H=H, W=W), make_masks(H=H, W=W)
    with torch.no_grad():
        from_dict = residuals(controlnet, labels=labels, masks=masks)
        from_packed = residuals(controlnet, controlnet_cond=pack_labels(SPECS, labels, masks))
    for a, b in zip(from_dict, from_packed, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("resolution", ["latent", "image"])
def test_save_and_load_restore_every_weight_bitwise(lm_diffusers, unet, resolution, tmp_path):
    controlnet = make_controlnet(lm_diffusers, unet, resolution, merger_drop="exclude", label_min_present=0.25)
    perturb_zero_convs(controlnet)
    with torch.no_grad():
        controlnet.merger.null_concept.normal_()  # a weight that starts at zero must round-trip too
    controlnet.save_pretrained(tmp_path)
    config = json.loads((tmp_path / lm_diffusers.CONFIG_NAME).read_text())
    assert [entry["name"] for entry in config["label_specs"]] == list(SPECS)  # token order kept
    semantic = config["label_specs"][0]
    assert (semantic["kind"], semantic["channels"], semantic["ignore_index"]) == ("categorical", 5, 0)
    assert config["merger_dim"] == 12 and config["merger_resolution"] == resolution

    loaded = lm_diffusers.TLAMControlNetModel.from_pretrained(tmp_path)
    before, after = controlnet.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert any(key.startswith("controlnet_cond_embedding.merger.") for key in after)
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert list(loaded.label_specs.items()) == list(controlnet.label_specs.items())
    assert loaded.controlnet_cond_embedding.min_present == 0.25
    labels, masks = make_labels(H=H, W=W), make_masks(H=H, W=W)
    with torch.no_grad():
        for a, b in zip(
            residuals(controlnet, labels=labels, masks=masks),
            residuals(loaded, labels=labels, masks=masks),
            strict=True,
        ):
            assert torch.equal(a, b)

    half = lm_diffusers.TLAMControlNetModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert half.merger.label_embed.dtype == torch.bfloat16
    assert torch.equal(half.merger.label_embed, controlnet.merger.label_embed.to(torch.bfloat16))


def test_embedder_on_its_own(lm_diffusers):
    from label_merge import TLAM

    merger = TLAM(SPECS, dim=12, depth=1, heads=3)
    embed = lm_diffusers.TLAMConditioningEmbedding(merger, 16, downscale_factor=4)
    labels, masks = make_labels(H=8, W=12), make_masks(H=8, W=12)
    out = embed(labels, masks)
    assert out.shape == (2, 16, 2, 3)
    assert not out.any()  # zero-initialised output convolution
    assert torch.equal(embed(pack_labels(SPECS, labels, masks)), out)


@pytest.mark.parametrize("merger_class", ["CLAM", "NaiveConcat"])
def test_embedder_takes_the_baseline_mergers(lm_diffusers, merger_class):
    import label_merge

    merger = getattr(label_merge, merger_class)(SPECS, **({"dim": 12, "depth": 1} if merger_class == "CLAM" else {}))
    embed = lm_diffusers.TLAMConditioningEmbedding(merger, 16, downscale_factor=2)
    labels, masks = make_labels(H=8, W=8), make_masks(H=8, W=8)
    assert embed(pack_labels(SPECS, labels, masks)).shape == (2, 16, 4, 4)


def test_errors(lm_diffusers, unet):
    from label_merge import TLAM

    controlnet = make_controlnet(lm_diffusers, unet)
    labels = make_labels(H=H, W=W)
    sample, t, text = inputs()
    with pytest.raises(ValueError, match="either"):
        controlnet(sample, t, text)
    with pytest.raises(ValueError, match="either"):
        controlnet(sample, t, text, pack_labels(SPECS, labels), labels=labels)
    with pytest.raises(ValueError, match="labels of 30x32 with label_downscale_factor=8 .* latents are 4x4"):
        controlnet(sample, t, text, labels=make_labels(H=30, W=32))
    with pytest.raises(ValueError, match="conditioning_channels"):
        make_controlnet(lm_diffusers, unet, conditioning_channels=3)
    with pytest.raises(ValueError, match="rgb"):
        make_controlnet(lm_diffusers, unet, controlnet_conditioning_channel_order="bgr")
    with pytest.raises(ValueError, match="block_out_channels"):
        make_controlnet(lm_diffusers, unet, "image", label_downscale_factor=4)
    with pytest.raises(TypeError, match="UNet2DConditionModel"):
        lm_diffusers.TLAMControlNetModel.from_unet(torch.nn.Linear(2, 2), SPECS)
    merger = TLAM(SPECS, dim=12, depth=1, heads=3)
    with pytest.raises(ValueError, match="resolution"):
        lm_diffusers.TLAMConditioningEmbedding(merger, 8, resolution="pixel")
    with pytest.raises(ValueError, match="power of two"):
        lm_diffusers.TLAMConditioningEmbedding(merger, 8, downscale_factor=3)
    with pytest.raises(TypeError, match="labels dict"):
        lm_diffusers.TLAMConditioningEmbedding(merger, 8)([labels])


def test_docstring_examples(lm_diffusers):
    import label_merge._diffusers_guidance as guidance

    for module in (lm_diffusers, guidance):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# ---------------------------------------------------------------- the training example

TINY_RUN = ["--resolution", "16", "--train-samples", "4", "--test-samples", "2", "--steps", "2"]
TINY_RUN += ["--batch-size", "2", "--unet-width", "8", "--merger-dim", "6", "--sample-steps", "2", "--log-every", "1"]
TINY_RUN += ["--estimator-steps", "2", "--estimator-samples", "4"]


def check_run(lm_diffusers, out, metrics):
    assert metrics["steps"] == 2 and metrics["final_loss"] > 0
    assert (out / "samples.png").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["steps"] == 2
    # Controllability: dense labels are given everywhere; sparse ones also have a missing split.
    assert "depth/given/abs_rel" in saved["controllability_all_labels"]
    assert "depth/missing/abs_rel" not in saved["controllability_all_labels"]
    assert "depth/missing/abs_rel" in saved["controllability_sparse_labels"]
    assert any(key.startswith("ceiling/depth/") for key in saved["controllability_sparse_labels"])
    from examples.datasets.synthetic import SyntheticDataset

    loaded = lm_diffusers.TLAMControlNetModel.from_pretrained(out / "controlnet")
    specs = SyntheticDataset(1, resolution=16, labels=["semantic", "depth", "normal", "edge"]).label_specs
    assert list(loaded.label_specs.items()) == list(specs.items())  # every spec field survives the config


def test_training_example_drops_every_label_of_some_images_for_unguided_branches():
    from examples.train_controlnet_tlam import Scenes, build_parser, sparsify

    count = 400
    present = torch.ones(count, 4, 4, dtype=torch.bool)
    scenes = Scenes(
        images=torch.zeros(count, 3, 4, 4),
        labels={"depth": torch.zeros(count, 1, 4, 4), "edge": torch.zeros(count, 1, 4, 4)},
        masks={"depth": present, "edge": present},
        regions=torch.zeros(count, 4, 4, dtype=torch.long),
    )
    masks = sparsify(scenes, region_p=0.0, label_p=0.0, drop_all_p=0.5, generator=torch.Generator().manual_seed(0))
    none_left = ~(masks["depth"].flatten(1).any(1) | masks["edge"].flatten(1).any(1))
    kept = masks["depth"].flatten(1).all(1) & masks["edge"].flatten(1).all(1)
    assert torch.equal(none_left | kept, torch.ones(count, dtype=torch.bool))  # all or nothing without label_p
    assert 0.4 < none_left.float().mean() < 0.6  # of all images, p_keep_all aside
    assert build_parser().parse_args([]).unconditional_dropout == 0.1


@pytest.mark.slow
def test_training_example_runs_from_a_config(lm_diffusers, tmp_path):
    from examples.train_controlnet_tlam import main

    metrics = main(
        [
            *TINY_RUN,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "run"),
            "--merger-resolution",
            "image",
        ]
    )
    check_run(lm_diffusers, tmp_path / "run", metrics)


@pytest.mark.slow
def test_training_example_reads_a_local_stable_diffusion_folder(lm_diffusers, tmp_path):
    from diffusers import AutoencoderKL, DDPMScheduler

    from examples.train_controlnet_tlam import main

    folder = tmp_path / "sd"
    tiny_unet(8).save_pretrained(folder / "unet")
    AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    ).save_pretrained(folder / "vae")
    DDPMScheduler().save_pretrained(folder / "scheduler")

    metrics = main(
        [*TINY_RUN, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), "--pretrained", str(folder)]
    )
    check_run(lm_diffusers, tmp_path / "run", metrics)
    # VAE factor 2: the latent-resolution merger saw 8x8 labels.
    config = json.loads((tmp_path / "run" / "controlnet" / lm_diffusers.CONFIG_NAME).read_text())
    assert config["label_downscale_factor"] == 2 and config["in_channels"] == 4


# ---------------------------------------------------------------- pipelines

IMAGE = 16  # pipeline image size; the tiny VAE's factor is 2, so latents are 8x8


@pytest.fixture(scope="module")
def sd_pipe(lm_diffusers, tmp_path_factory):
    pytest.importorskip("transformers")
    from diffusers_pipelines import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def sdxl_pipe(lm_diffusers, tmp_path_factory):
    pytest.importorskip("transformers")
    from diffusers_pipelines import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("sdxl"), sdxl=True)


def stock_images(pipe, labels, masks, seed=0):
    """The stock pipeline's images from packed labels (no label-aware guidance)."""
    cond = pipe.controlnet.pack(labels, masks)
    generator = torch.Generator().manual_seed(seed)
    return pipe("a cat", image=cond, num_inference_steps=2, generator=generator, output_type="pt").images


def test_pipeline_save_and_load_round_trip(lm_diffusers, sd_pipe, tmp_path):
    from diffusers import StableDiffusionControlNetPipeline

    labels, masks = make_labels(B=1, H=IMAGE, W=IMAGE), make_masks(B=1, H=IMAGE, W=IMAGE)
    before = stock_images(sd_pipe, labels, masks)
    sd_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["controlnet"] == ["label_merge.diffusers", "TLAMControlNetModel"]

    explicit = lm_diffusers.TLAMControlNetModel.from_pretrained(tmp_path / "controlnet")
    for loaded in (
        StableDiffusionControlNetPipeline.from_pretrained(tmp_path),
        StableDiffusionControlNetPipeline.from_pretrained(tmp_path, controlnet=explicit),
    ):
        assert type(loaded.controlnet) is lm_diffusers.TLAMControlNetModel
        saved, restored = sd_pipe.controlnet.state_dict(), loaded.controlnet.state_dict()
        assert saved.keys() == restored.keys()
        assert all(torch.equal(saved[key], restored[key]) for key in saved)
        loaded.set_progress_bar_config(disable=True)
        assert torch.equal(stock_images(loaded, labels, masks), before)  # same seed, same image

    half = StableDiffusionControlNetPipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert half.controlnet.merger.label_embed.dtype == torch.bfloat16
    assert torch.equal(half.controlnet.merger.label_embed, sd_pipe.controlnet.merger.label_embed.bfloat16())


def test_pipeline_loads_in_a_fresh_process(sd_pipe, tmp_path):
    labels, masks = make_labels(B=1, H=IMAGE, W=IMAGE), make_masks(B=1, H=IMAGE, W=IMAGE)
    sd_pipe.save_pretrained(tmp_path / "pipe")
    torch.save(
        {
            "cond": sd_pipe.controlnet.pack(labels, masks),
            "image": stock_images(sd_pipe, labels, masks),
            "weights": sd_pipe.controlnet.state_dict(),
        },
        tmp_path / "expected.pt",
    )
    code = f"""
import torch
import label_merge.diffusers  # a saved pipeline names this module; diffusers never imports it itself
from diffusers import StableDiffusionControlNetPipeline
expected = torch.load({str(tmp_path / "expected.pt")!r})
pipe = StableDiffusionControlNetPipeline.from_pretrained({str(tmp_path / "pipe")!r})
weights = pipe.controlnet.state_dict()
assert weights.keys() == expected["weights"].keys()
assert all(torch.equal(weights[k], v) for k, v in expected["weights"].items())
image = pipe("a cat", image=expected["cond"], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
             output_type="pt").images
assert torch.equal(image, expected["image"])
print("ok")
"""
    root = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("merger_dim", [8, 256])  # 256 is the last stock conditioning width
def test_a_tlam_folder_never_loads_as_a_stock_controlnet(lm_diffusers, unet, merger_dim, tmp_path):
    from diffusers import ControlNetModel
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    controlnet = lm_diffusers.TLAMControlNetModel.from_unet(
        unet, SPECS, merger_dim=merger_dim, merger_depth=1, merger_heads=1
    )
    controlnet.save_pretrained(tmp_path / "controlnet")
    assert not (tmp_path / "controlnet" / "config.json").exists()
    for load in (ControlNetModel.from_pretrained, MultiControlNetModel.from_pretrained):
        with pytest.raises(OSError, match="config.json"):
            load(str(tmp_path / "controlnet"))
    loaded = lm_diffusers.TLAMControlNetModel.from_pretrained(tmp_path / "controlnet")
    assert loaded.merger.out_channels == merger_dim


def test_a_wrong_downscale_factor_names_the_sizes(lm_diffusers, sd_pipe, unet):
    labels = make_labels(B=1, H=IMAGE, W=IMAGE)
    wrong = lm_diffusers.TLAMControlNetModel.from_unet(unet, SPECS, merger_dim=12, merger_depth=1)  # factor 8
    stock = sd_pipe.components | {"controlnet": wrong}
    pipe = type(sd_pipe)(**stock)
    pipe.set_progress_bar_config(disable=True)
    message = r"labels of 16x16 with label_downscale_factor=8 give 2x2 latents, but the latents are 8x8.*=2"
    with pytest.raises(ValueError, match=message):
        pipe("a cat", image=wrong.pack(labels), num_inference_steps=1, output_type="latent")
    with pytest.raises(ValueError, match=message):
        lm_diffusers.LabelGuidedPipeline(pipe)("a cat", labels, num_inference_steps=1, output_type="latent")


def spy_conditions(controlnet):
    """Record the ``controlnet_cond`` of every ControlNet call; returns (calls, hook handle)."""
    calls = []

    def hook(module, args, kwargs):
        calls.append(kwargs.get("controlnet_cond", args[3] if len(args) > 3 else None))

    return calls, controlnet.register_forward_pre_hook(hook, with_kwargs=True)


def presence_channels(specs):
    """Indices of the presence channels in a packed tensor (each label's last channel)."""
    from label_merge.label_dicts import packed_channels

    ends, total = [], 0
    for name in specs:
        total += packed_channels({name: specs[name]})
        ends.append(total - 1)
    return ends


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_unconditional_branch_has_every_label_missing(lm_diffusers, which, request):
    pipe = request.getfixturevalue(f"{which}_pipe")
    guided = lm_diffusers.LabelGuidedPipeline(pipe)
    labels, masks = make_labels(B=1, H=IMAGE, W=IMAGE), make_masks(B=1, H=IMAGE, W=IMAGE)
    calls, handle = spy_conditions(pipe.controlnet)
    try:
        guided("a cat", labels, masks, num_inference_steps=2, label_guidance={"depth": 2.0}, output_type="latent")
    finally:
        handle.remove()
    assert len(calls) == 2  # one batched call per step
    presence = presence_channels(SPECS)
    expected = pipe.controlnet.pack(labels, masks)
    without_depth = pipe.controlnet.pack(labels, {**masks, "depth": torch.zeros_like(masks["depth"])})
    for cond in calls:
        assert cond.shape[0] == 3  # unconditional, conditional, without depth
        assert not cond[0].any()  # no label anywhere: presence (and values) all zero
        assert cond[1, presence].any()
        assert torch.equal(cond[1:2], expected)
        assert torch.equal(cond[2:3], without_depth)


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_zero_label_scales_are_exactly_plain_guidance(lm_diffusers, which, request):
    pipe = request.getfixturevalue(f"{which}_pipe")
    guided = lm_diffusers.LabelGuidedPipeline(pipe)
    labels, masks = make_labels(B=1, H=IMAGE, W=IMAGE), make_masks(B=1, H=IMAGE, W=IMAGE)

    def run(label_guidance):
        generator = torch.Generator().manual_seed(0)
        return guided(
            "a cat", labels, masks, num_inference_steps=2, generator=generator,
            label_guidance=label_guidance, output_type="latent",
        ).images  # fmt: skip

    plain = run(None)
    assert torch.equal(run({"depth": 0.0, "semantic": 0.0}), plain)
    assert not torch.equal(run({"depth": 3.0}), plain)  # a non-zero scale does act


def test_composition_formula():
    from label_merge.diffusers import compose_label_guidance

    g = torch.Generator().manual_seed(0)
    uncond, cond, without = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    plain = uncond + 7.5 * (cond - uncond)
    zero = compose_label_guidance(uncond, cond, {"depth": without}, guidance_scale=7.5, label_guidance={"depth": 0.0})
    assert torch.equal(zero, plain)
    two = compose_label_guidance(uncond, cond, {"depth": without}, guidance_scale=7.5, label_guidance={"depth": 2.0})
    assert torch.allclose(two, plain + 2.0 * (cond - without))
    assert torch.equal(compose_label_guidance(None, cond, {}, guidance_scale=1.0), cond)
    with pytest.raises(ValueError, match="without 'normal'"):
        compose_label_guidance(uncond, cond, {}, guidance_scale=7.5, label_guidance={"normal": 1.0})


@pytest.mark.parametrize(
    "scheduler, prediction_type",
    [("DDIMScheduler", "epsilon"), ("DDIMScheduler", "v_prediction"), ("EulerDiscreteScheduler", "epsilon")],
)
def test_guided_pipeline_without_guidance_follows_the_stock_loop(lm_diffusers, sd_pipe, scheduler, prediction_type):
    # guidance_scale 1 and no label scales: one branch, the stock pipeline's own computation, for
    # Stable Diffusion 1.x (epsilon) and 2.x (v-prediction) and a scheduler with a noise sigma.
    import diffusers

    labels, masks = make_labels(B=1, H=IMAGE, W=IMAGE), make_masks(B=1, H=IMAGE, W=IMAGE)
    cond = sd_pipe.controlnet.pack(labels, masks)
    original = sd_pipe.scheduler
    sd_pipe.scheduler = getattr(diffusers, scheduler)(prediction_type=prediction_type)
    try:
        stock = sd_pipe(
            "a cat", image=cond, num_inference_steps=2, guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0), output_type="latent",
        ).images  # fmt: skip
        guided = lm_diffusers.LabelGuidedPipeline(sd_pipe)(
            "a cat", labels, masks, num_inference_steps=2, guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0), output_type="latent",
        ).images  # fmt: skip
    finally:
        sd_pipe.scheduler = original
    assert torch.allclose(guided, stock, atol=1e-6)


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_guided_batching_matches_one_prompt_at_a_time(lm_diffusers, which, request):
    pipe = request.getfixturevalue(f"{which}_pipe")
    guided = lm_diffusers.LabelGuidedPipeline(pipe)
    labels, masks = make_labels(B=2, H=IMAGE, W=IMAGE), make_masks(B=2, H=IMAGE, W=IMAGE)
    noise = torch.randn(4, 4, IMAGE // 2, IMAGE // 2, generator=torch.Generator().manual_seed(5))
    options = {"num_inference_steps": 2, "label_guidance": {"normal": 1.5}, "output_type": "latent"}
    together = guided(["a cat", "a dog"], labels, masks, num_images_per_prompt=2, latents=noise, **options).images
    assert together.shape == (4, 4, IMAGE // 2, IMAGE // 2)
    for i, prompt in enumerate(["a cat", "a dog"]):
        one = {name: x[i : i + 1] for name, x in labels.items()}
        one_masks = {name: m[i : i + 1] for name, m in masks.items()}
        alone = guided(prompt, one, one_masks, num_images_per_prompt=2, latents=noise[2 * i : 2 * i + 2], **options)
        # float32 rounding of batched against single matmuls in the UNet: about 1e-5 on latents of size 1
        difference = (together[2 * i : 2 * i + 2] - alone.images).abs().max()
        assert difference < 1e-4, (prompt, difference)
    pil = guided("a cat", {k: v[:1] for k, v in labels.items()}, num_inference_steps=1, num_images_per_prompt=3).images
    assert len(pil) == 3 and pil[0].size == (IMAGE, IMAGE)


def test_guided_pipeline_resizes_labels_mask_aware(lm_diffusers, sd_pipe):
    from label_merge import resize_labels

    labels, masks = make_labels(B=1, H=2 * IMAGE, W=2 * IMAGE), make_masks(B=1, H=2 * IMAGE, W=2 * IMAGE, p=0.5)
    calls, handle = spy_conditions(sd_pipe.controlnet)
    try:
        lm_diffusers.LabelGuidedPipeline(sd_pipe)(
            "a cat", labels, masks, height=IMAGE, width=IMAGE, num_inference_steps=1, output_type="latent"
        )
    finally:
        handle.remove()
    small, small_masks = resize_labels(SPECS, labels, masks, size=IMAGE)
    assert torch.equal(calls[0][1:], sd_pipe.controlnet.pack(small, small_masks))


def test_guided_pipeline_errors(lm_diffusers, sd_pipe):
    guided = lm_diffusers.LabelGuidedPipeline(sd_pipe)
    labels = make_labels(B=1, H=IMAGE, W=IMAGE)
    with pytest.raises(ValueError, match="unknown labels \\['height'\\]"):
        guided("a cat", labels, label_guidance={"height": 1.0}, num_inference_steps=1)
    with pytest.raises(ValueError, match="multiples of the VAE's factor 2"):
        guided("a cat", labels, height=15, num_inference_steps=1)
    with pytest.raises(ValueError, match="batch size 3"):
        guided(["a", "b"], make_labels(B=3, H=IMAGE, W=IMAGE), num_inference_steps=1)
    with pytest.raises(TypeError, match="labels must be a non-empty dict"):
        guided("a cat", sd_pipe.controlnet.pack(labels), num_inference_steps=1)
    with pytest.raises(TypeError, match="TLAMControlNetModel"):
        lm_diffusers.LabelGuidedPipeline(object())


@pytest.mark.slow
def test_label_guidance_benchmark_smoke(lm_diffusers, tmp_path):
    from benchmarks.label_guidance import main

    report = main(["--smoke", "--cache-dir", str(tmp_path / "cache"), "--results-dir", str(tmp_path / "results")])
    assert report["settings"]["smoke"]
    for suffix in (".json", ".md", ".png"):
        assert (tmp_path / "results" / f"label_guidance_smoke{suffix}").is_file()
    assert "SMOKE RUN" in (tmp_path / "results" / "label_guidance_smoke.md").read_text()
    for name, curve in report["curves"].items():
        assert [point["scale"] for point in curve["points"]] == [0.0, 2.0], name
        assert curve["points"][1]["difference_to_0"]["scenes"] > 0
