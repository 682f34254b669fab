"""The studio's Gradio page: panels of a :class:`~examples.studio_session.StudioSession`, and its controls.

Editing is by clicking on a label panel: a brush tool paints a disc of the brush radius around
the clicked pixel (click along a path to paint a stroke), a point tool acts on the object under
the pixel or places one there. Each click is one edit, undone by **Undo**. Plain clicks are used
instead of a free-hand canvas because they land on exact label pixels at any zoom and need no
WebGL, so the page works the same in every browser, headless ones included.

The page serves one person editing one scene (the studio is a local tool): the session lives in
the server process, and Gradio's queue runs one edit at a time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# A local tool does not report usage or check for updates over the network (read at import).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from examples.studio_session import TOOLS, Rendering, StudioSession  # noqa: E402

__all__ = ["build_app", "ELEMENT_IDS"]

ELEMENT_IDS = {
    "generated": "generated",
    "concept": "concept",
    "status": "status",
    "controllability": "controllability",
    "scene_index": "scene-index",
    "load": "load-scene",
    "undo": "undo",
    "tool": "tool",
}
"""``elem_id`` of the main elements; a label's panel is ``label-<name>``, its contribution map ``share-<name>``."""


def _controllability_table(rendering: Rendering) -> str:
    lines = [rendering.controllability_note]
    if rendering.controllability:
        lines += [
            "",
            "| label | figure | given pixels | missing pixels |",
            "|---|---|---|---|",
        ]
        for name, figure, given, missing, higher in rendering.controllability:
            arrow = "↑" if higher else "↓"
            cells = ["–" if np.isnan(v) else f"{v:.3f}" for v in (given, missing)]
            lines.append(f"| {name} | {figure} {arrow} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def build_app(session: StudioSession) -> gr.Blocks:
    """The studio page for ``session`` (scenes load from it; edits go through it)."""
    label_names = list(session.specs)
    share_names = (
        list(getattr(session.generator.merger, "specs", {}))
        if hasattr(session.generator.merger, "contributions")
        else []
    )
    classes = session.class_names

    with gr.Blocks(title="label-merge studio") as app:
        gr.Markdown(
            f"### label-merge studio\n`{session.checkpoint}` ({session.config.model.merger} + "
            f"{session.config.model.generator}, {session.config.data.dataset}, on {session.device}). "
            "Click on a label panel to edit it; the image follows."
        )
        status = gr.Markdown(elem_id=ELEMENT_IDS["status"])
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                with gr.Row():
                    scene_index = gr.Number(
                        value=0, precision=0, minimum=0, label="held-out scene", elem_id=ELEMENT_IDS["scene_index"]
                    )
                    load = gr.Button("Load", elem_id=ELEMENT_IDS["load"], min_width=60)
                    randomise = gr.Button("Random", min_width=60)
                label_file = gr.File(label="or a label file (.npz)", file_types=[".npz"], type="filepath", height=120)
                tool = gr.Radio(
                    list(TOOLS), value=TOOLS[0], label="tool (click a label panel)", elem_id=ELEMENT_IDS["tool"]
                )
                radius = gr.Slider(0, 16, value=3, step=0.5, label="brush radius (label pixels)")
                class_name = gr.Dropdown(classes, value=classes[0] if classes else None, label="class to paint")
                depth_step = gr.Slider(0.05, 2.0, value=0.5, step=0.05, label="depth push/pull (m)")
                object_size = gr.Slider(0.2, 1.5, value=0.6, step=0.05, label="inserted object size (m)")
                with gr.Row():
                    drop_name = gr.Dropdown(label_names, value=label_names[0], label="label", scale=2)
                    drop = gr.Button("Drop label", scale=1, min_width=60)
                with gr.Row():
                    undo = gr.Button("Undo", elem_id=ELEMENT_IDS["undo"], min_width=60)
                    reset = gr.Button("Reset", min_width=60)
                    export = gr.Button("Export", min_width=60)
                exported = gr.File(
                    label="exported labels and image", file_count="multiple", interactive=False, height=90
                )
            with gr.Column(scale=3):
                with gr.Row():
                    generated = gr.Image(
                        label="generated", format="png", interactive=False, elem_id=ELEMENT_IDS["generated"]
                    )
                    concept = gr.Image(
                        label="concept (PCA)", format="png", interactive=False, elem_id=ELEMENT_IDS["concept"]
                    )
                with gr.Row():
                    label_images = {
                        name: gr.Image(label=name, format="png", interactive=False, elem_id=f"label-{name}")
                        for name in label_names
                    }
                gr.Markdown("**contribution of each label** (TLAM attention, 0 to 1)")
                with gr.Row():
                    share_images = {
                        name: gr.Image(label=name, format="png", interactive=False, elem_id=f"share-{name}")
                        for name in share_names
                    }
                share_note = gr.Markdown()
                gr.Markdown("**controllability** (labels read back from the image)")
                controllability = gr.Markdown(elem_id=ELEMENT_IDS["controllability"])

        panels = [
            generated,
            concept,
            *label_images.values(),
            *share_images.values(),
            share_note,
            controllability,
            status,
        ]

        def show(message: str) -> list:
            rendering = session.render()
            return [
                rendering.image,
                rendering.concept,
                *(rendering.labels.get(name) for name in label_names),
                *(rendering.contributions.get(name) for name in share_names),
                rendering.contributions_note,
                _controllability_table(rendering),
                f"{message} · image in {rendering.seconds * 1000:.0f} ms",
            ]

        def keep(message: str) -> list:
            """Leave the panels as they are and only say what went wrong."""
            return [gr.update()] * (len(panels) - 1) + [f"**could not do that:** {message}"]

        def guarded(action):
            def run(*args):
                try:
                    return show(action(*args))
                except (ValueError, FileNotFoundError) as err:
                    return keep(str(err))

            return run

        load.click(guarded(lambda index: session.load_held_out(int(index or 0))), [scene_index], panels)

        def random_scene():
            index = int(np.random.default_rng().integers(0, 1000))
            return [index, *guarded(session.load_held_out)(index)]

        randomise.click(random_scene, [], [scene_index, *panels])
        label_file.upload(guarded(lambda path: session.load_label_file(path)), [label_file], panels)

        for name, image in label_images.items():

            def clicked(tool_name, r, cls, step, size, evt: gr.SelectData, name=name):
                x, y = evt.index  # display pixels of the clicked panel
                point = (int(y) // session.scale, int(x) // session.scale)
                return guarded(
                    lambda: session.apply(
                        tool_name, name, point, radius=r, class_name=cls, depth_step=step, object_size=size
                    )
                )()

            image.select(clicked, [tool, radius, class_name, depth_step, object_size], panels)

        drop.click(guarded(session.drop), [drop_name], panels)
        undo.click(guarded(session.undo), [], panels)
        reset.click(guarded(session.reset), [], panels)

        def export_files():
            try:
                folder = Path(tempfile.mkdtemp(prefix="label-merge-studio-"))
                return [str(p) for p in session.export(folder)]
            except ValueError as err:
                gr.Warning(str(err))
                return None

        export.click(export_files, [], [exported])
        app.load(guarded(lambda: session.load_held_out(0)), [], panels)
    return app
