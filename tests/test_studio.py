"""The studio's session (model, scene, edits, panels, export) and its command line, without a browser."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_training import tiny_config

from examples.label_files import load_label_file
from examples.metrics.estimator import LabelEstimator, save_label_estimator
from examples.studio import main as studio_main
from examples.studio_session import TOOLS, StudioSession, hatch_missing, resolve_checkpoint
from examples.training.builders import build_datasets, build_networks, label_specs_of, specs_to_dict
from examples.training.checkpoint import save_checkpoint


def train_tiny(folder, **model):
    """A run folder with one checkpoint of a tiny, untrained model, written as training writes it.

    The networks come from the training script's builders and the checkpoint from its writer,
    so the studio opens it exactly as it opens a trained run; no training step is needed for
    the image to respond to the labels.
    """
    config = tiny_config(folder)
    config = replace(config, model=replace(config.model, **model))
    train, _ = build_datasets(config.data, seed=config.train.seed)
    specs = label_specs_of(train)
    generator, discriminator = build_networks(config, specs)
    save_checkpoint(
        folder / "run" / "checkpoints",
        0,
        modules={"generator": generator, "discriminator": discriminator},
        optimizers={},
        config={**config.to_dict(), "label_specs": specs_to_dict(specs)},
    )
    return folder / "run"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tlam_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("tlam"))


@pytest.fixture(scope="module")
def estimator_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("estimator") / "estimator.safetensors"
    torch.manual_seed(0)
    save_label_estimator(LabelEstimator(num_classes=9, width=4, depth=1), path)
    return path


@pytest.fixture
def session(tlam_run, estimator_file):
    studio = StudioSession(tlam_run, device="cpu", estimator=estimator_file)
    studio.load_held_out(0)
    return studio


def test_every_tool_edits_and_renders(session):
    first = session.render()
    assert first.image.shape == (32 * session.scale, 32 * session.scale, 3) and first.image.dtype == np.uint8
    assert set(first.labels) == set(session.specs) and set(first.contributions) == set(session.specs)
    for tool in TOOLS:
        text = session.apply(tool, "depth", (26, 16), radius=3, class_name="box", object_size=0.8)
        assert text
        rendering = session.render()
        assert rendering.seconds > 0
    assert len(session.history.descriptions) == len(TOOLS)
    assert session.undo().startswith("undid: inserted a cylinder")


def test_erasing_depth_hatches_the_depth_panel_and_changes_the_image(session):
    before = session.render()
    session.apply("erase", "depth", (16, 16), radius=2)
    after = session.render()
    s = session.scale
    block = after.labels["depth"][16 * s : 17 * s, 16 * s : 17 * s]
    assert len(np.unique(block)) == 2  # the two greys of the hatching
    assert not np.array_equal(before.image, after.image)
    assert np.array_equal(before.labels["semantic"], after.labels["semantic"])


def test_controllability_scores_given_and_missing_pixels(session):
    session.apply("erase", "depth", (16, 16), radius=6)
    rows = {(name, figure): (given, missing) for name, figure, given, missing, _ in session.render().controllability}
    given, missing = rows[("depth", "abs_rel")]
    assert np.isfinite(given) and np.isfinite(missing)  # missing: scored against the scene as loaded


def test_export_writes_a_label_file_and_the_image(session, tmp_path):
    session.apply("erase", "normal", (10, 10), radius=3)
    label_path, image_path = session.export(tmp_path)
    labels, masks = load_label_file(label_path, session.specs)
    current_labels, current_masks = session.history.current
    assert torch.equal(masks["normal"], current_masks["normal"]) and not masks["normal"][10, 10]
    assert torch.equal(labels["depth"], current_labels["depth"])
    assert image_path.stat().st_size > 0
    session.load_label_file(label_path)  # and it reads back into the studio
    assert not session.history.current[1]["normal"][10, 10]
    assert session.render().image.shape[0] == 32 * session.scale


@pytest.mark.parametrize("merger, generator", [("clam", "asap"), ("naive", "spade"), ("semantic", "asap")])
def test_mergers_without_contributions_say_so(tmp_path, merger, generator):
    run = train_tiny(tmp_path, merger=merger, generator=generator)
    studio = StudioSession(run, device="cpu", cache_dir=tmp_path / "no-cache")
    studio.load_held_out(1)
    studio.apply("erase", "depth", (5, 5))
    rendering = studio.render()
    assert not rendering.contributions and "no per-label contribution maps" in rendering.contributions_note
    assert "no label estimator" in rendering.controllability_note and "train_label_estimator.py" in (
        rendering.controllability_note
    )
    assert rendering.image.shape[-1] == 3


def test_bad_edits_and_missing_checkpoints_are_named(session, tmp_path):
    with pytest.raises(ValueError, match="unknown tool 'smudge'"):
        session.apply("smudge", "depth", (1, 1))
    with pytest.raises(ValueError, match="choose a class"):
        session.apply("paint class", "semantic", (1, 1), class_name="dragon")
    with pytest.raises(FileNotFoundError, match="holds no step_"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(SystemExit, match="no such checkpoint or run folder"):
        studio_main([str(tmp_path / "nowhere")])


def test_default_checkpoint_is_the_main_jobs_or_a_message(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="train the main job first"):
        resolve_checkpoint(None)


def test_hatching_marks_only_missing_pixels():
    picture = np.full((8, 8, 3), 200, dtype=np.uint8)
    present = torch.tensor([[True, False], [True, True]])
    out = hatch_missing(picture, present, scale=4)
    assert (out[:4, :4] == 200).all() and (out[4:, :] == 200).all()
    assert len(np.unique(out[:4, 4:])) == 2
