"""How much of SyntheticDataset's images its labels predict, for each appearance.

Usage (from the repository root)::

    python benchmarks/synthetic_predictability.py            # the figures of docs/datasets/synthetic.md
    python benchmarks/synthetic_predictability.py --train 64 --test 16 --resolution 32   # quicker

For every appearance (``labelled``, the default look, and ``random``, the earlier one) it renders
the same scenes (same seed, hence the same geometry and labels), fits the three per-pixel
predictors of :mod:`examples.datasets.procedural.predictability` (semantic only, additive over
labels, joint with interactions) on the first ``--train`` scenes and scores R^2 on the next
``--test`` scenes. Prints a table and writes ``benchmarks/results/synthetic_predictability.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from examples.datasets import SyntheticDataset  # noqa: E402
from examples.datasets.procedural import APPEARANCES  # noqa: E402
from examples.datasets.procedural.predictability import PREDICTORS, predictability  # noqa: E402

_OUT = Path("benchmarks/results/synthetic_predictability.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=256, help="training scenes")
    parser.add_argument("--test", type=int, default=64, help="held-out scenes")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--num-features", type=int, default=512, help="random features per label")
    parser.add_argument("--max-train-pixels", type=int, default=60_000)
    parser.add_argument("--out", type=Path, default=_OUT)
    args = parser.parse_args()

    results = {}
    for appearance in sorted(APPEARANCES):
        dataset = SyntheticDataset(
            args.train + args.test, resolution=args.resolution, seed=args.seed, appearance=appearance
        )
        samples = [dataset[i] for i in range(len(dataset))]
        scores = predictability(
            samples[: args.train],
            samples[args.train :],
            num_features=args.num_features,
            max_train_pixels=args.max_train_pixels,
        )
        results[appearance] = {
            **scores,
            "all_minus_semantic": scores["interaction"] - scores["semantic"],
            "interaction_minus_additive": scores["interaction"] - scores["additive"],
        }
        print(appearance, {k: round(v, 3) for k, v in results[appearance].items()}, flush=True)

    print(f"\n| appearance | {' | '.join(PREDICTORS)} | all - semantic | interaction - additive |")
    print("|---|" + "---|" * (len(PREDICTORS) + 2))
    for appearance, r in results.items():
        cells = [f"{r[name]:.3f}" for name in (*PREDICTORS, "all_minus_semantic", "interaction_minus_additive")]
        print(f"| {appearance} | {' | '.join(cells)} |")

    record = {
        "what": "held-out R^2 of per-pixel predictors of RGB from 3x3 label neighbourhoods",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch": torch.__version__,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
