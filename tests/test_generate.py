"""Label files and generation from a checkpoint with no real images."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from test_training import tiny_config

from examples.generate import export_synthetic, generate
from examples.label_files import load_label_file, load_label_folder, save_label_file
from examples.training.loop import Trainer
from label_merge import LabelSpec

SPECS = {"semantic": LabelSpec.categorical(4), "depth": LabelSpec.continuous(1), "normal": LabelSpec.continuous(3)}


def test_label_file_round_trip_and_dense_default(tmp_path):
    labels = {"semantic": torch.randint(0, 4, (5, 6)), "depth": torch.rand(1, 5, 6)}
    mask = torch.rand(5, 6) > 0.5
    save_label_file(tmp_path / "a.npz", labels, {"depth": mask})
    got, masks = load_label_file(tmp_path / "a.npz", SPECS)
    assert torch.equal(got["semantic"], labels["semantic"]) and torch.equal(got["depth"], labels["depth"])
    assert torch.equal(masks["depth"], mask) and masks["semantic"].all() and "normal" not in got


@pytest.mark.parametrize(
    "arrays, pattern",
    [
        ({"height": np.zeros((5, 6), np.float32)}, "names no known label"),
        ({"semantic": np.zeros((5, 6), np.float32)}, "integer"),
        ({"normal": np.zeros((2, 5, 6), np.float32)}, r"\(3, H, W\)"),
        ({"depth": np.zeros((5, 6), np.float32), "mask_depth": np.ones((5, 5), bool)}, "differ in size"),
        ({"mask_depth": np.ones((5, 6), bool)}, "holds no labels"),
    ],
)
def test_bad_label_files_name_the_file(tmp_path, arrays, pattern):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=pattern) as err:
        load_label_file(path, SPECS)
    assert "bad.npz" in str(err.value)


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .npz"):
        load_label_folder(tmp_path, SPECS)
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read label file"):
        load_label_folder(tmp_path, SPECS)


def test_generate_from_a_checkpoint(tmp_path):
    config = tiny_config(tmp_path)
    config = replace(config, train=replace(config.train, steps=1))
    Trainer(config, progress=False).train()
    checkpoint = next((tmp_path / "run" / "checkpoints").glob("*.safetensors"))
    export_synthetic(3, tmp_path / "labels", resolution=32, seed=5)
    sparse = np.load(tmp_path / "labels" / "scene_0002.npz")  # depth removed, normals half missing
    arrays = {k: sparse[k] for k in sparse.files if k not in ("depth", "mask_depth")}
    arrays["mask_normal"] = np.arange(32 * 32).reshape(32, 32) % 2 == 0
    np.savez(tmp_path / "labels" / "scene_0002.npz", **arrays)
    written = generate(str(checkpoint), str(tmp_path / "labels"), str(tmp_path / "out"), batch_size=2)
    assert [p.name for p in written] == ["scene_0000.png", "scene_0001.png", "scene_0002.png"]
    assert Image.open(written[0]).size == (32, 32)
    assert (tmp_path / "out" / "grid.png").is_file()
