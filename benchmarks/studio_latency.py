"""Edit-to-image latency of the studio: each tool applied to a held-out scene, then everything redrawn.

    python benchmarks/studio_latency.py                         # the main job's newest checkpoint
    python benchmarks/studio_latency.py runs/my_run --repeats 10 --estimator FILE

What is timed is what one click in the studio costs on the server, without the browser: the edit
itself (:meth:`examples.studio_session.StudioSession.apply`) and :meth:`~StudioSession.render`
(the generator's forward pass, the label pictures, the concept PCA, the contribution maps and,
with a label estimator, the controllability readout). Each tool is applied ``--repeats`` times
at pixels along the image's lower third and undone again; the median and every raw time are
kept. Writes ``benchmarks/results/studio_latency_<device>.json`` and prints a table.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from examples.studies.environment import configure_cpu, machine_info, utc_now, write_json  # noqa: E402
from examples.studio_session import TOOLS, StudioSession  # noqa: E402


def measure(session: StudioSession, *, repeats: int, scene: int) -> dict[str, list[float]]:
    """``{tool: [seconds per edit + render]}``, plus ``render only`` for the unedited scene."""
    session.load_held_out(scene)
    session.render()  # warm-up: first calls allocate
    H, W = next(iter(session.history.current[0].values())).shape[-2:]
    times: dict[str, list[float]] = {"render only": []}
    for _ in range(repeats):
        started = time.perf_counter()
        session.render()
        times["render only"].append(time.perf_counter() - started)
    classes = session.class_names
    for tool in TOOLS:
        times[tool] = []
        for k in range(repeats):
            point = (int(H * 0.8), int(W * (0.2 + 0.6 * k / max(repeats - 1, 1))))
            started = time.perf_counter()
            try:
                session.apply(tool, "depth", point, class_name=classes[1] if len(classes) > 1 else None)
            except ValueError:  # e.g. an object hidden at this pixel: not an edit, not timed
                continue
            session.render()
            times[tool].append(time.perf_counter() - started)
            session.undo()
    return times


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", help="a run folder or checkpoint (default: runs/asap_tlam)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--scene", type=int, default=0, help="held-out scene to edit")
    p.add_argument("--estimator", help="a label estimator file (default: the cached one, if any)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the studio's default is 1)")
    p.add_argument("--out", help="output JSON (default: benchmarks/results/studio_latency_<device>.json)")
    args = p.parse_args(argv)
    configure_cpu(args.threads)
    session = StudioSession(args.checkpoint, device=args.device, estimator=args.estimator)
    times = measure(session, repeats=args.repeats, scene=args.scene)
    size = tuple(next(iter(session.history.current[0].values())).shape[-2:])
    record = {
        "when": utc_now(),
        "machine": machine_info(args.device),
        "checkpoint": str(session.checkpoint),
        "model": {"merger": session.config.model.merger, "generator": session.config.model.generator},
        "image_size": list(size),
        "estimator": session.estimator_note,
        "median_seconds": {tool: statistics.median(t) if t else None for tool, t in times.items()},
        "raw_seconds": times,
    }
    out = Path(args.out or f"benchmarks/results/studio_latency_{args.device.split(':')[0]}.json")
    write_json(out, record)
    print(
        f"{size[0]}x{size[1]}, {record['model']['merger']} + {record['model']['generator']}, {session.estimator_note}"
    )
    print(f"load average {record['machine'].get('load_average_1_5_15min')}, {torch.get_num_threads()} torch threads")
    for tool, median in record["median_seconds"].items():
        print(f"  {tool:16s} {'-' if median is None else f'{median * 1000:7.0f} ms'}")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
