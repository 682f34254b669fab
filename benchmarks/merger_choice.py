"""Choosing a merger: TLAM, CLAM or concatenation, along the axes where the choice could matter.

Every run is the merger probe's (``examples/studies/probe.py``: a merger and one shared
convolutional decoder learn labels -> image with a squared error, no GAN), with the probe's
settings for every row unless the row says otherwise. Four parts, each fixed before any run:

- ``ladder``: where a gap to concatenation comes from. Naive concatenation as the paper describes
  it (raw labels, no presence channels), with normalisation, with normalisation and presence
  channels (the library's default), and TLAM with and without label normalisation; dense and 50%
  region-sparse, seeds 0-4.
- ``width``: TLAM and CLAM at merger widths 16, 32, 64 and 96 (depth 2, 2 heads: only the width
  varies), dense and sparse, seeds 0-2, at the probe's 400 steps; and at 1,200 steps for the
  sparse rows, TLAM at every width and CLAM at 16 and 32 (capacity against optimisation).
- ``missing``: naive, CLAM and TLAM trained dense, with 50% region dropout, and with region plus
  whole-label dropout (each label of each scene dropped with probability 0.25), seeds 0-4;
  each tested at sparsity 0, 0.25, 0.5, 0.75 and 0.9 and with labels removed entirely (each
  one, each pair, and all but one), most of them combinations that training never showed.
- ``fidelity``: why TLAM's concept loses class information. A linear read-out of the semantic
  class (least squares on one-hot targets, fitted on training scenes, scored on held-out ones)
  from the semantic token as embedded, from the same token after the transformer blocks, and
  from the concept (the mean over tokens), at each width; next to CLAM's concept and the
  one-hot map itself.

Comparisons are seed-paired (seed ``i`` of every row trains on the same batches and masks):
difference of held-out R², two-level bootstrap 95% interval, paired t-test over seeds, and a
verdict only when the interval excludes zero (``examples/studies/statistics.py``).

Trained runs are kept under ``--work-dir`` and reused, so the training can be spread over
several processes (``python benchmarks/merger_choice.py train`` in each: a run is claimed by the
first process that starts it) and the reports written once at the end
(``python benchmarks/merger_choice.py report``). Writes ``merger_choice_<part>.json``, ``.md`` and
``.png`` under ``--results-dir``.

Usage (from the repository root)::

    python benchmarks/merger_choice.py train            # every run not yet trained, in priority order
    python benchmarks/merger_choice.py report           # every part whose runs exist
    python benchmarks/merger_choice.py all --smoke      # the pipeline in seconds; numbers mean nothing
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import hashlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from examples.studies.environment import configure_cpu, machine_info, utc_now, write_json  # noqa: E402
from examples.studies.probe import (  # noqa: E402
    ProbeConfig,
    ProbeRow,
    evaluate_probe,
    load_probe,
    probe_masks,
    render_scenes,
    save_probe,
    total_variance,
    train_probe,
)
from examples.studies.statistics import bootstrap_mean, compare, verdict  # noqa: E402
from examples.training.builders import HELD_OUT_SEED_OFFSET  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("ladder", "width", "missing", "fidelity")
SEEDS = {"ladder": (0, 1, 2, 3, 4), "width": (0, 1, 2), "missing": (0, 1, 2, 3, 4), "fidelity": (0, 1, 2)}
WIDTHS = (16, 32, 64, 96)  # 96: the paper's width
LONG_STEPS = 1200
# The longer budget, sparse rows: TLAM at every width (does a wider TLAM need more steps?), CLAM
# at the two narrowest.
LONG_WIDTHS = {"clam": (16, 32), "tlam": WIDTHS}
WHOLE_LABEL_DROPOUT = 0.25
TEST_SPARSITIES = (0.0, 0.25, 0.5, 0.75, 0.9)


def _row(name: str, merger: str, sparse: bool, **options) -> ProbeRow:
    return ProbeRow(name, merger, sparse, **options)


def _regime(sparse: bool) -> str:
    return "sparse" if sparse else "dense"


def ladder_rows() -> list[ProbeRow]:
    rows = []
    for sparse in (False, True):
        r = _regime(sparse)
        rows += [
            _row(f"naive-paper-{r}", "naive", sparse, normalize=False, include_masks=False),
            _row(f"naive-norm-{r}", "naive", sparse, include_masks=False),
            _row(f"naive-{r}", "naive", sparse),
            _row(f"tlam-raw-{r}", "tlam", sparse, normalize=False),
            _row(f"tlam-{r}", "tlam", sparse),
        ]
    return rows


def width_rows() -> list[ProbeRow]:
    rows = [_row(f"naive-{_regime(s)}", "naive", s) for s in (False, True)]
    for merger, width, sparse in itertools.product(("clam", "tlam"), WIDTHS, (False, True)):
        name = f"{merger}-{_regime(sparse)}" if width == 16 else f"{merger}-w{width}-{_regime(sparse)}"
        rows.append(_row(name, merger, sparse, dim=None if width == 16 else width))
    rows.append(_row("naive-sparse-long", "naive", True, steps=LONG_STEPS))
    for merger, width in ((m, w) for m in ("clam", "tlam") for w in LONG_WIDTHS[m]):
        suffix = "" if width == 16 else f"-w{width}"
        rows.append(
            _row(f"{merger}{suffix}-sparse-long", merger, True, dim=None if width == 16 else width, steps=LONG_STEPS)
        )
    return rows


def missing_rows() -> list[ProbeRow]:
    rows = []
    for merger in ("naive", "clam", "tlam"):
        rows += [
            _row(f"{merger}-dense", merger, False),
            _row(f"{merger}-sparse", merger, True),
            _row(f"{merger}-sparse-wholelabel", merger, True, label_dropout=WHOLE_LABEL_DROPOUT),
        ]
    return rows


def fidelity_rows() -> list[ProbeRow]:
    rows = [_row("naive-dense", "naive", False), _row("clam-dense", "clam", False)]
    rows += [_row(f"tlam-w{w}-dense", "tlam", False, dim=w) for w in WIDTHS if w != 16]
    rows.insert(2, _row("tlam-dense", "tlam", False))
    return rows


ROWS_OF = {"ladder": ladder_rows, "width": width_rows, "missing": missing_rows, "fidelity": fidelity_rows}


def all_jobs() -> list[tuple[ProbeRow, int]]:
    """Every (row, seed) of every part, once (a run that several parts share is trained once).

    Ordered so that a training cut short still answers as much as it can: the cheap naive and
    CLAM runs (up to width 64); TLAM at width 16 on seeds 0-2; TLAM at width 32 on seeds 0-2;
    TLAM at width 16 on the remaining seeds; TLAM at widths 64 and 96; CLAM at width 96; then
    TLAM's 1,200-step runs. Within a tier, seed by seed, so every row gains paired seeds together.
    """
    jobs: dict[tuple[str, int], tuple[ProbeRow, int]] = {}
    for part in ("missing", "ladder", "fidelity", "width"):
        for row in ROWS_OF[part]():
            for seed in SEEDS[part]:
                known = jobs.get((row.name, seed))
                if known is not None and known[0] != row:
                    raise AssertionError(f"row {row.name!r} is defined two ways")
                jobs.setdefault((row.name, seed), (row, seed))

    def tier(row: ProbeRow, seed: int) -> int:
        width = row.dim or ProbeConfig.dim
        if row.merger != "tlam":
            return 5 if width > 64 else 0
        if (row.steps or 0) > ProbeConfig.steps:
            return 6
        if width == 16:
            return 1 if seed < 3 else 3
        return 2 if width == 32 else 4

    return sorted(jobs.values(), key=lambda job: (tier(*job), job[1], job[0].name))


# ---------------------------------------------------------------- training, cached on disk


def run_path(work_dir: Path, row: ProbeRow, seed: int, config: ProbeConfig) -> Path:
    """Where a run is kept: named by the row and a hash of everything that shapes it."""
    key = json.dumps({"config": row.configure(config).to_dict(), "row": asdict(row)}, sort_keys=True)
    digest = hashlib.sha256((config.digest() + key).encode()).hexdigest()[:12]
    return work_dir / row.name / f"seed{seed}-{digest}.safetensors"


def train_run(path: Path, row: ProbeRow, seed: int, train, config: ProbeConfig) -> bool:
    """Train and save one run unless it exists or another process has claimed it; True if trained."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    claim = path.with_suffix(".claim")
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: one process per run
    except FileExistsError:
        return False
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    try:
        started = time.perf_counter()
        save_probe(train_probe(row, train, config, seed=seed), path)
        path.with_suffix(".json").write_text(json.dumps({"train_seconds": time.perf_counter() - started}))
    finally:
        claim.unlink(missing_ok=True)
    return True


# ---------------------------------------------------------------- evaluation


def removal_conditions(names: list[str]) -> dict[str, tuple[str, ...]]:
    """Labels removed entirely: each one, each pair, and all but one."""
    found = {f"without {n}": (n,) for n in names}
    found |= {f"without {a}+{b}": (a, b) for a, b in itertools.combinations(names, 2)}
    found |= {f"only {n}": tuple(m for m in names if m != n) for n in names}
    return found


def without(masks: dict[str, torch.Tensor], removed: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: (torch.zeros_like(m) if k in removed else m) for k, m in masks.items()}


class Evaluator:
    """Held-out scenes, their variance and fixed evaluation masks, shared by every row."""

    def __init__(self, test, config: ProbeConfig) -> None:
        self.test, self.config = test, config
        self.sst = total_variance(test.images)  # (N,)
        self._masks: dict[float, dict] = {}

    def masks(self, sparsity: float) -> dict[str, torch.Tensor]:
        if sparsity not in self._masks:
            self._masks[sparsity] = probe_masks(self.test, sparsity, seed=self.config.eval_mask_seed)
        return self._masks[sparsity]

    def explained(self, model, masks) -> np.ndarray:
        """Per-scene ``1 - sse_j / mean(sst)`` ``(N,)``: its mean is R²."""
        return 1.0 - evaluate_probe(model, self.test, masks)["sse"] / self.sst.mean()


# A row's scores are ``{seed: per-scene R² (N,)}`` over the seeds it has completed.
Scores = dict[int, np.ndarray]


def summary(scores: Scores) -> dict:
    seeds = sorted(scores)
    matrix = np.stack([scores[s] for s in seeds])  # (seeds, N)
    seed_means = matrix.mean(axis=1)
    return {
        **bootstrap_mean(matrix),
        "seeds": seeds,
        "per_seed": seed_means.tolist(),
        "seed_std": float(seed_means.std(ddof=1)) if len(seed_means) > 1 else None,
    }


def claim(text: str, a: Scores, b: Scores, better: str, worse: str) -> dict:
    """A > B on the seeds both rows completed, seed-paired."""
    common = sorted(set(a) & set(b))
    matrix_a, matrix_b = np.stack([a[s] for s in common]), np.stack([b[s] for s in common])  # (seeds, N)
    comparison = compare(matrix_a, matrix_b, paired_seeds=True, seed=0)
    return {
        "claim": text,
        "better": better,
        "worse": worse,
        "seeds": common,
        **comparison.to_dict(),
        "verdict": verdict(comparison, higher_is_better=True),
    }


# ---------------------------------------------------------------- the parts


class Study:
    def __init__(self, args) -> None:
        self.args = args
        self.config = ProbeConfig()
        if args.smoke:
            self.config = replace(
                self.config, resolution=16, train_scenes=16, test_scenes=8, steps=3, batch_size=4, dim=8, heads=2
            )
        self.work_dir = Path(args.work_dir)
        self.progress = not args.no_progress
        self._train = self._test = self._evaluator = None

    def seeds(self, part: str) -> tuple[int, ...]:
        return SEEDS[part][:2] if self.args.smoke else SEEDS[part]

    def row(self, row: ProbeRow) -> ProbeRow:
        """In smoke mode every width and step count is tiny."""
        if not self.args.smoke:
            return row
        return replace(row, dim=8 if row.dim else None, steps=4 if row.steps else None)

    @property
    def train(self):
        if self._train is None:
            self._train = render_scenes(self.config.train_scenes, self.config.resolution, self.config.scene_seed)
        return self._train

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            test = render_scenes(
                self.config.test_scenes, self.config.resolution, self.config.scene_seed + HELD_OUT_SEED_OFFSET
            )
            self._evaluator = Evaluator(test, self.config)
        return self._evaluator

    def path(self, row: ProbeRow, seed: int) -> Path:
        return run_path(self.work_dir, self.row(row), seed, self.config)

    def model(self, row: ProbeRow, seed: int):
        path = self.path(row, seed)
        return load_probe(path, self.row(row), self.train.specs, self.config).eval() if path.exists() else None

    def train_all(self) -> int:
        jobs = [(row, seed) for row, seed in all_jobs() if not self.args.smoke or seed in self.seeds("ladder")]
        trained = 0
        for row, seed in tqdm(jobs, desc="merger choice runs", unit="run", disable=not self.progress):
            trained += train_run(self.path(row, seed), self.row(row), seed, self.train, self.config)
        return trained

    def completed(self, row: ProbeRow, seeds) -> list[int]:
        return [s for s in seeds if self.path(row, s).exists()]

    def complete(self, rows: list[ProbeRow], seeds) -> list[ProbeRow]:
        """The rows with at least two trained seeds (a part reports only those, on the seeds they have)."""
        return [row for row in rows if len(self.completed(row, seeds)) >= 2]

    def train_seconds(self, rows, seeds) -> float:
        total = 0.0
        for row, seed in itertools.product(rows, seeds):
            record = self.path(row, seed).with_suffix(".json")
            if record.exists():
                total += json.loads(record.read_text())["train_seconds"]
        return total

    # -- the R² of each row under its own regime (ladder, width)

    def regime_scores(self, rows, seeds) -> dict[str, Scores]:
        scores = {}
        for row in rows:
            masks = self.evaluator.masks(self.config.sparsity if row.sparse else 0.0)
            scores[row.name] = {
                s: self.evaluator.explained(self.model(row, s), masks) for s in self.completed(row, seeds)
            }
        return scores

    def ladder(self) -> dict:
        seeds = self.seeds("ladder")
        rows = self.complete(ladder_rows(), seeds)
        scores = self.regime_scores(rows, seeds)
        claims = []
        for r in ("dense", "sparse"):
            pairs = [
                (f"tlam-{r}", f"naive-paper-{r}", f"TLAM > naive as in the paper ({r})"),
                (f"tlam-{r}", f"naive-norm-{r}", f"TLAM > naive with normalisation ({r})"),
                (f"tlam-{r}", f"naive-{r}", f"TLAM > naive with normalisation and presence ({r})"),
                (f"naive-norm-{r}", f"naive-paper-{r}", f"normalisation helps naive ({r})"),
                (f"naive-{r}", f"naive-norm-{r}", f"presence channels help naive ({r})"),
                (f"tlam-{r}", f"tlam-raw-{r}", f"normalisation helps TLAM ({r})"),
                (f"tlam-raw-{r}", f"naive-paper-{r}", f"TLAM > naive, both on raw labels ({r})"),
            ]
            claims += [claim(t, scores[a], scores[b], a, b) for a, b, t in pairs if a in scores and b in scores]
        return {"rows": {n: summary(m) for n, m in scores.items()}, "claims": claims, "seeds": list(seeds)}

    def width(self) -> dict:
        seeds = self.seeds("width")
        rows = self.complete(width_rows(), seeds)
        scores = self.regime_scores(rows, seeds)
        claims = []
        for merger, r in itertools.product(("tlam", "clam"), ("dense", "sparse", "sparse-long")):
            naive = "naive-sparse-long" if r == "sparse-long" else f"naive-{r}"
            for w in LONG_WIDTHS[merger] if r == "sparse-long" else WIDTHS:
                name = f"{merger}-{r}" if w == 16 else f"{merger}-w{w}-{r}"
                if name in scores and naive in scores:
                    text = f"{merger.upper()} width {w} > naive ({r.replace('-long', f', {LONG_STEPS} steps')})"
                    claims.append({**claim(text, scores[name], scores[naive], name, naive), "width": w})
        return {"rows": {n: summary(m) for n, m in scores.items()}, "claims": claims, "seeds": list(seeds)}

    def missing(self) -> dict:
        seeds = self.seeds("missing")
        rows = self.complete(missing_rows(), seeds)
        names = list(self.train.specs)
        conditions = {f"sparsity {s:g}": (s, ()) for s in TEST_SPARSITIES}
        conditions |= {text: (0.0, removed) for text, removed in removal_conditions(names).items()}
        scores: dict[str, dict[str, Scores]] = {c: {} for c in conditions}
        for row in tqdm(rows, desc="missing: evaluating", disable=not self.progress):
            models = {s: self.model(row, s) for s in self.completed(row, seeds)}
            for text, (sparsity, removed) in conditions.items():
                masks = without(self.evaluator.masks(sparsity), removed)
                scores[text][row.name] = {s: self.evaluator.explained(m, masks) for s, m in models.items()}
        claims = []
        for text, by_row in scores.items():
            for regime in ("dense", "sparse", "sparse-wholelabel"):
                for other in ("naive", "clam"):
                    a, b = f"tlam-{regime}", f"{other}-{regime}"
                    if a in by_row and b in by_row:
                        found = claim(f"TLAM > {other} ({regime} training), {text}", by_row[a], by_row[b], a, b)
                        claims.append({**found, "condition": text, "regime": regime, "against": other})
        table = {c: {n: summary(m) for n, m in by_row.items()} for c, by_row in scores.items()}
        return {"conditions": table, "claims": claims, "seeds": list(seeds)}

    def fidelity(self) -> dict:
        from examples.studies.fidelity import class_readout

        seeds = self.seeds("fidelity")
        rows = self.complete(fidelity_rows(), seeds)
        fit = self.train.take(torch.arange(min(128, len(self.train))))  # the first training scenes, already rendered
        test = self.evaluator.test
        results: dict[str, dict[str, list[dict]]] = {}
        for row in tqdm(rows, desc="fidelity: read-outs", disable=not self.progress):
            for seed in self.completed(row, seeds):
                for where, scores in class_readout(self.model(row, seed).merger, fit, test).items():
                    results.setdefault(f"{row.name}: {where}", {}).setdefault("runs", []).append(
                        {"seed": seed, **scores}
                    )
        for entry in results.values():
            for metric in ("miou", "pixel_accuracy"):
                entry[metric] = summary({run["seed"]: np.array([run[metric]]) for run in entry["runs"]})
        return {"readouts": results, "seeds": list(seeds)}

    def report(self, part: str) -> dict | None:
        started = time.perf_counter()
        result = getattr(self, part)()
        rows = ROWS_OF[part]()
        if not result.get("rows", result.get("conditions", result.get("readouts"))):
            print(f"{part}: no complete row yet; run `train` first")
            return None
        report = {
            "benchmark": f"merger choice, {part}: the merger probe (labels -> image, shared decoder, no GAN)",
            "part": part,
            "config": self.config.to_dict(),
            "row_settings": {row.name: asdict(self.row(row)) for row in rows},
            **result,
            "train_seconds": self.train_seconds(rows, self.seeds(part)),
            "machine": machine_info("cpu"),
            "date": utc_now(),
            "report_seconds": time.perf_counter() - started,
        }
        out = Path(self.args.results_dir)
        stem = f"{self.args.name}_{part}"
        write_json(out / f"{stem}.json", report)
        from examples.studies.choice_report import MARKDOWN, PLOTS

        (out / f"{stem}.md").write_text(MARKDOWN[part](report))
        PLOTS[part](report, out / f"{stem}.png")
        print((out / f"{stem}.md").read_text())
        return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("action", choices=["train", "report", "all"], help="train runs, write reports, or both")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to report")
    p.add_argument("--smoke", action="store_true", help="tiny settings: checks the pipeline in seconds")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "merger_choice"), help="trained runs, reused")
    p.add_argument("--name", default="merger_choice", help="stem of the result files")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    configure_cpu(args.threads)
    study = Study(args)
    reports = {}
    if args.action in ("train", "all"):
        print(f"trained {study.train_all()} run(s)")
    if args.action in ("report", "all"):
        for part in args.parts:
            reports[part] = study.report(part)
    return reports


if __name__ == "__main__":
    main()
