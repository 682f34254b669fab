"""label-merge studio: edit a scene's labels in the browser and watch the generated image follow.

    python examples/studio.py                                   # newest checkpoint of runs/asap_tlam
    python examples/studio.py runs/my_run                       # a run folder: its newest checkpoint
    python examples/studio.py runs/asap_tlam/checkpoints/step_00000400.safetensors --port 7861

Needs the ``app`` extra (``pip install -e ".[examples,app]"``). Prints the local URL to open.
Runs on a GPU where there is one (``--device`` to choose). The per-label controllability
readout needs the label estimator: the one that ``examples/train_label_estimator.py`` caches
for the run's image size, or ``--estimator FILE``; without one the studio says so and shows
everything else. See ``docs/studio.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402

from examples.training.checkpoint import CheckpointError  # noqa: E402

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("checkpoint", nargs="?", help="a run folder or a checkpoint file (default: runs/asap_tlam)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: a GPU where there is one)")
    p.add_argument("--estimator", help="a label estimator file (default: the cached one for the run's scenes)")
    p.add_argument("--cache-dir", help="where cached label estimators live")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch: one keeps edits fast on a busy machine (two threads wait for each other)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from examples.studies.environment import configure_cpu
    from examples.studio_session import StudioSession

    try:
        configure_cpu(args.threads)
        session = StudioSession(args.checkpoint, device=args.device, estimator=args.estimator, cache_dir=args.cache_dir)
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        raise SystemExit(f"studio.py: {err}") from None
    try:
        from examples.studio_ui import build_app
    except ImportError as err:
        raise SystemExit(f'studio.py: needs Gradio ({err}): pip install -e ".[examples,app]"') from None
    print(f"studio: {session.checkpoint} on {session.device}; {session.estimator_note}")
    app = build_app(session)
    app.queue(default_concurrency_limit=1)
    # Gradio prints the local URL ("Running on local URL: http://127.0.0.1:7860") when it starts.
    app.launch(server_name=args.host, server_port=args.port, inbrowser=False, show_error=True)


if __name__ == "__main__":
    main()
