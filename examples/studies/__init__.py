"""The building blocks of the studies that reproduce the paper's Section 4 (see ``docs/studies.md``).

Modules:
    budgets: how much compute a study spends (``--budget smoke | cpu-hour | cpu-2h | paper | N``).
    conditions: seeded evaluation sparsity and removed labels.
    segmenters: the small segmenter of a dataset, trained once and cached.
    scoring: FID, KID, PSNR, SSIM and the segmentation score of a generator, and per-scene values.
    statistics: bootstrap intervals and paired tests for comparing rows.
    runs: the rows of Table 1, trained in segments and measured along the way.
    study: what the quality and sensitivity studies share.
    report, plots: tables, claims and figures.
    editing, scenes: label editing (Sec. 4.6) and the scenes it works on.
    environment: CPU threads, machine record, atomic JSON.
"""
