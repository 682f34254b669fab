"""Tables and plots of the merger choice study (``benchmarks/merger_choice.py``), one per part."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["MARKDOWN", "PLOTS"]


def _cell(s: Mapping | None, scale: float = 1.0, digits: int = 3) -> str:
    if s is None or s.get("mean") is None:
        return "n/a"
    text = f"{s['mean'] * scale:.{digits}f}"
    if s.get("low") is not None:
        text += f" [{s['low'] * scale:.{digits}f}, {s['high'] * scale:.{digits}f}]"
    return text


def _header(report: Mapping, what: str) -> list[str]:
    config = report["config"]
    machine = report["machine"]
    return [
        f"# Choosing a merger: {what}",
        "",
        f"The merger probe: {config['resolution']}x{config['resolution']} synthetic scenes, "
        f"{config['train_scenes']} for training and {config['test_scenes']} held out, batch {config['batch_size']}, "
        f"learning rate {config['lr']:g}, decoder width {config['decoder_width']}, {config['steps']} steps unless "
        f"a row says otherwise; seeds {report['seeds']} planned for every row. Every setting was fixed before the "
        "runs and is the same for every row (`row_settings` in the JSON). A row is reported on the seeds it "
        "completed (listed per row; at least two), a comparison on the seeds both rows completed.",
        "",
        f"Training time summed over this part's runs: {report['train_seconds'] / 60:.1f} min on "
        f"{machine['cpu']} ({machine['torch_threads']} thread per run, shared machine: not a speed figure).",
        "",
    ]


def _claims(claims, extra: str = "") -> list[str]:
    lines = [
        "| claim | difference of R² | 95% interval | paired t p | seeds | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in claims:
        p = "n/a" if c["p_value"] is None else f"{c['p_value']:.2g}"
        verdict = c["verdict"] if c["verdict"].startswith("undecided") else f"**{c['verdict']}**"
        interval = f"[{c['low']:+.4f}, {c['high']:+.4f}]"
        lines.append(f"| {c['claim']} | {c['difference']:+.4f} | {interval} | {p} | {len(c['seeds'])} | {verdict} |")
    lines += [
        "",
        "Difference of held-out R² (A − B), seeds paired (seed i of both rows trained on the same batches and "
        "masks), two-level bootstrap 95% interval over seeds and scenes, paired t-test over seeds; a verdict "
        f"only when the interval excludes zero.{extra}",
        "",
    ]
    return lines


def _rows_table(rows: Mapping, settings: Mapping) -> list[str]:
    lines = [
        "| row | merger | width | steps | R² [95% interval] | seed sd | seeds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in rows.items():
        row = settings[name]
        width = (row["dim"] or 16) if row["merger"] in ("tlam", "clam") else ""
        options = []
        if not row["normalize"]:
            options.append("raw labels")
        if row["merger"] == "naive" and not row["include_masks"]:
            options.append("no presence channels")
        merger = row["merger"] + (f" ({', '.join(options)})" if options else "")
        steps = row["steps"] or "400"
        seeds = ",".join(map(str, s["seeds"]))
        lines.append(
            f"| {name} | {merger} | {width} | {steps} | {_cell(s, digits=4)} | {s['seed_std']:.4f} | {seeds} |"
        )
    return lines + [""]


def ladder_markdown(report: Mapping) -> str:
    lines = _header(report, "the baseline ladder")
    lines += [
        "Naive concatenation as the paper describes it (raw labels, one-hot classes, no presence channels), "
        "with the dataset's label normalisation, and with normalisation and one presence channel per label "
        "(the library's `NaiveConcat` default); TLAM with and without normalisation. Dense rows are trained "
        "and measured with dense labels, sparse rows with 50% region sparsity (fresh masks every step in "
        "training, one fixed set for every row in evaluation).",
        "",
        *_rows_table(report["rows"], report["row_settings"]),
        *_claims(report["claims"]),
    ]
    return "\n".join(lines)


def width_markdown(report: Mapping) -> str:
    lines = _header(report, "merger width")
    lines += [
        "TLAM and CLAM at widths 16, 32, 64 and 96 with depth 2 and 2 heads (only the width varies), dense and "
        "50% sparse, at 400 steps; the sparse rows also at 1,200 steps (TLAM at every width, CLAM at 16 and "
        "32), next to naive concatenation at 1,200 steps, so that capacity and optimisation are told apart.",
        "",
        *_rows_table(report["rows"], report["row_settings"]),
        *_claims(report["claims"]),
    ]
    return "\n".join(lines)


def missing_markdown(report: Mapping) -> str:
    lines = _header(report, "missing labels never seen in training")
    rows = list(next(iter(report["conditions"].values())))
    lines += [
        "Each merger trained dense, with 50% region dropout (`sparse`), and with region dropout plus "
        "whole-label dropout (each label of each scene dropped with probability 0.25: `sparse-wholelabel`); "
        "each measured at every test condition on the same held-out scenes and masks. `without X`: label X "
        "missing at every pixel, the rest dense; `only X`: every other label missing.",
        "",
        "Held-out R² [95% interval]:",
        "",
        "| condition | " + " | ".join(rows) + " |",
        "| --- | " + " | ".join("---" for _ in rows) + " |",
    ]
    for condition, by_row in report["conditions"].items():
        lines.append(f"| {condition} | " + " | ".join(_cell(by_row.get(r), digits=3) for r in rows) + " |")
    lines += ["", "## TLAM against naive and CLAM, per condition and training", ""]
    decided = [c for c in report["claims"] if not c["verdict"].startswith("undecided")]
    lines += [
        f"{len(report['claims'])} comparisons; {sum(c['verdict'] == 'holds' for c in decided)} hold (TLAM better), "
        f"{sum(c['verdict'] == 'reversed' for c in decided)} are reversed, the rest undecided.",
        "",
        *_claims(report["claims"]),
    ]
    return "\n".join(lines)


def _clipped(s: Mapping) -> dict:
    """A [0, 1] score's summary with its interval clipped to [0, 1] (a t-interval can pass the bounds)."""
    if s.get("low") is None:
        return dict(s)
    return {**s, "low": max(0.0, s["low"]), "high": min(1.0, s["high"])}


def fidelity_markdown(report: Mapping) -> str:
    lines = _header(report, "where the semantic class is lost")
    lines += [
        "A linear read-out of the semantic class (least squares on one-hot targets with a bias, fitted on the "
        "pixels of 128 training scenes, scored on the held-out scenes, dense labels) at each stage of the "
        "dense-trained mergers. The one-hot map of naive concatenation is the ceiling.",
        "",
        "| merger: stage | mIoU % [95% interval] | pixel accuracy % |",
        "| --- | --- | --- |",
    ]
    for name, entry in report["readouts"].items():
        miou, accuracy = _clipped(entry["miou"]), _clipped(entry["pixel_accuracy"])
        lines.append(f"| {name} | {_cell(miou, 100, 1)} | {_cell(accuracy, 100, 1)} |")
    lines += [
        "",
        "Intervals: the wider of the bootstrap and the t-interval over seeds (one read-out per trained model), "
        "shown clipped to [0, 100] (the JSON keeps them as computed).",
        "",
    ]
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errorbar(ax, x, summaries, **kw):
    mean = np.array([s["mean"] for s in summaries])
    low = np.array([s["low"] if s["low"] is not None else s["mean"] for s in summaries])
    high = np.array([s["high"] if s["high"] is not None else s["mean"] for s in summaries])
    ax.errorbar(x, mean, yerr=[mean - low, high - mean], capsize=3, marker="o", **kw)


def ladder_plot(report: Mapping, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, regime in zip(axes, ("dense", "sparse"), strict=True):
        names = [n for n in report["rows"] if n.endswith(f"-{regime}")]
        _errorbar(ax, range(len(names)), [report["rows"][n] for n in names], color="black", linestyle="none")
        ax.set_xticks(range(len(names)), [n.removesuffix(f"-{regime}") for n in names], rotation=25, ha="right")
        ax.set_title(f"{regime} labels")
        ax.set_ylabel("held-out R²")
    fig.suptitle("Baseline ladder: mean and 95% interval over seeds and scenes")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def width_plot(report: Mapping, path: Path) -> None:
    plt = _plt()
    rows, settings = report["rows"], report["row_settings"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=False)
    for ax, regime in zip(axes, ("dense", "sparse", "sparse-long"), strict=True):
        naive = rows.get("naive-sparse-long" if regime == "sparse-long" else f"naive-{regime}")
        if naive:
            ax.axhspan(naive["low"], naive["high"], color="grey", alpha=0.3)
            ax.axhline(naive["mean"], color="grey", label="naive")
        for merger, color in (("tlam", "tab:blue"), ("clam", "tab:orange")):
            points = [
                (settings[n]["dim"] or 16, rows[n])
                for n in rows
                if settings[n]["merger"] == merger and n.endswith(f"-{regime}")
            ]
            if points:
                points.sort(key=lambda p: p[0])
                _errorbar(ax, [p[0] for p in points], [p[1] for p in points], color=color, label=merger.upper())
        ax.set_xscale("log", base=2)
        widths = sorted(
            {settings[n]["dim"] or 16 for n in rows if n.endswith(f"-{regime}") and settings[n]["merger"] != "naive"}
        )
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.minorticks_off()
        ax.set_xlabel("merger width")
        ax.set_title({"sparse-long": "50% sparse, 1,200 steps"}.get(regime, f"{regime}, 400 steps"))
        ax.set_ylabel("held-out R²")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def missing_plot(report: Mapping, path: Path) -> None:
    plt = _plt()
    conditions = report["conditions"]
    sparsities = [c for c in conditions if c.startswith("sparsity ")]
    removals = [c for c in conditions if c.startswith("without ") and "+" not in c] + [
        c for c in conditions if c.startswith("only ")
    ]
    regimes = ("dense", "sparse", "sparse-wholelabel")
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    colors = {"naive": "grey", "clam": "tab:orange", "tlam": "tab:blue"}
    for col, regime in enumerate(regimes):
        ax = axes[0, col]
        for merger, color in colors.items():
            name = f"{merger}-{regime}"
            if name in conditions[sparsities[0]]:
                xs = [float(c.split()[1]) for c in sparsities]
                _errorbar(ax, xs, [conditions[c][name] for c in sparsities], color=color, label=merger)
        ax.set_title(f"trained {regime}")
        ax.set_xlabel("test sparsity")
        ax.set_ylabel("held-out R²")
        ax.legend(fontsize=8)
        ax = axes[1, col]
        for i, (merger, color) in enumerate(colors.items()):
            name = f"{merger}-{regime}"
            if name in conditions[removals[0]]:
                xs = np.arange(len(removals)) + (i - 1) * 0.25
                _errorbar(ax, xs, [conditions[c][name] for c in removals], color=color, linestyle="none")
        ax.set_xticks(range(len(removals)), removals, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("held-out R²")
    fig.suptitle("Missing labels: R² as labels go missing (mean, 95% interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fidelity_plot(report: Mapping, path: Path) -> None:
    plt = _plt()
    names = list(report["readouts"])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    entries = [report["readouts"][n]["miou"] for n in names]
    mean = np.array([e["mean"] for e in entries]) * 100
    low = np.array([e["low"] if e["low"] is not None else e["mean"] for e in entries]) * 100
    high = np.array([e["high"] if e["high"] is not None else e["mean"] for e in entries]) * 100
    ax.barh(range(len(names)), mean, xerr=[mean - low, high - mean], color="tab:blue", capsize=3)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("linear read-out of the semantic class, held-out mIoU %")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


MARKDOWN = {
    "ladder": ladder_markdown,
    "width": width_markdown,
    "missing": missing_markdown,
    "fidelity": fidelity_markdown,
}
PLOTS = {"ladder": ladder_plot, "width": width_plot, "missing": missing_plot, "fidelity": fidelity_plot}
