"""Fitting the fusion weights to opinion scores (the file format: msds.metric.fusion_file).

Objective (ours; the paper does not publish its training): maximise the
Pearson correlation between the fused score sum_l softmax(theta)_l S_l and
the MOS on the training references, by Adam on theta from zero (uniform
weights). Pearson is invariant to the affine part of the usual logistic
mapping, so this targets PLCC and, through it, SRCC.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from msds.evaluation import provenance, significance
from msds.evaluation.correlation import correlations
from msds.metric.fusion_file import FORMAT, FusionError, load_fusion, save_fusion  # noqa: F401  (msds.fusion's names)

@dataclass
class LevelScores:
    refs: List[str]
    mos: np.ndarray  # (N,)
    levels: np.ndarray  # (N, L)
    lower_is_better: Optional[bool] = None  # the opinion scores' direction, None where unknown
    direction_source: str = "not recorded"
    left_out: int = 0  # rows left out for a non-finite MOS or level score


def read_level_scores(path: Path) -> LevelScores:
    """The per-pair CSV written by `msds eval --out`: ref, dist, mos, score, level0..."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            level_columns = sorted((f for f in fields if f.startswith("level") and f[5:].isdigit()),
                                   key=lambda f: int(f[5:]))
            if "ref" not in fields or "mos" not in fields or not level_columns:
                raise FusionError(f"{path}: expected the columns ref, mos and level0, level1, ... of `msds eval --out`")
            refs, mos, levels = [], [], []
            for line, row in enumerate(reader, start=2):
                try:
                    mos.append(float(row["mos"]))
                    levels.append([float(row[c]) for c in level_columns])
                except (TypeError, ValueError):
                    raise FusionError(f"{path}, line {line}: expected numbers in mos and {', '.join(level_columns)}") from None
                refs.append(row["ref"])
    except FileNotFoundError:
        raise FusionError(f"{path}: no such file") from None
    mos_values, level_values = np.array(mos), np.array(levels)
    finite = np.isfinite(mos_values) & np.isfinite(level_values).all(axis=1)
    refs = [ref for ref, keep in zip(refs, finite) if keep]
    if len(refs) < 6:
        raise FusionError(f"{path}: expected at least 6 scored pairs with finite values to fit fusion weights, "
                          f"got {len(refs)}")
    record = provenance.read(path) or {}
    opinion = record.get("opinion", {})
    lower = opinion.get("lower_is_better")
    return LevelScores(refs, mos_values[finite], level_values[finite],
                       lower if isinstance(lower, bool) else None,
                       opinion.get("source", "not recorded") if isinstance(lower, bool) else "not recorded",
                       int(np.sum(~finite)))


def settle_direction(data: LevelScores, name: str, flag: bool) -> List[str]:
    """Fix data.lower_is_better: the results' record if it says, else the flag
    --lower-is-better if given, else the data (see direction); returns what
    to tell the user (where the direction came from, and any contradiction)."""
    inferred = direction(data) < 0
    words = {True: "lower is better (DMOS)", False: "higher is better (MOS)"}
    if data.lower_is_better is not None:
        notes = [f"{name}: opinion scores {words[data.lower_is_better]}, as recorded by {data.direction_source}"]
        if flag and not data.lower_is_better:
            notes.append(f"warning: --lower-is-better contradicts {name}'s record ({words[False]}); "
                         "the record is followed")
        return notes
    if flag:
        data.lower_is_better, data.direction_source = True, "--lower-is-better"
        notes = [f"{name}: opinion scores {words[True]}, as --lower-is-better says"]
        if not inferred:
            notes.append(f"warning: --lower-is-better contradicts {name}'s data, whose mean level score rises "
                         "with the opinion scores (a MOS)")
        return notes
    data.lower_is_better, data.direction_source = inferred, "inferred from the data"
    return [f"{name}: no record of the opinion scores' direction; inferred from the data: {words[inferred]} "
            "(the sign of the mean level score's SRCC with them)"]


def split_by_reference(refs: Sequence[str], test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Boolean train and test masks; every pair of one reference lands on the same side."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in [0, 1), got {test_fraction}")
    unique = sorted(set(refs))
    random.Random(seed).shuffle(unique)
    count = int(round(test_fraction * len(unique)))
    if test_fraction > 0:
        count = min(max(count, 1), len(unique) - 1)
    test_refs = set(unique[:count])
    test = np.array([r in test_refs for r in refs])
    return ~test, test


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    da, db = a - a.mean(), b - b.mean()
    return (da * db).sum() / (da.norm() * db.norm() + 1e-12)


def fit_logits(levels: np.ndarray, mos: np.ndarray, steps: int = 500, lr: float = 0.05) -> np.ndarray:
    """Logits theta maximising Pearson(softmax(theta) . levels, mos), from zero."""
    scores = torch.tensor(levels, dtype=torch.float64)
    target = torch.tensor(mos, dtype=torch.float64)
    logits = torch.zeros(scores.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = -_pearson(scores @ logits.softmax(0), target)
        loss.backward()
        optimiser.step()
    return logits.detach().numpy()


def fused(levels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    weights = np.exp(logits - logits.max())
    return levels @ (weights / weights.sum())


def fit_fusion(data: LevelScores, test_fraction: float, seed: int, steps: int,
               lower_is_better: bool) -> Dict[str, object]:
    """Fit on the training references; report correlations before and after on both parts."""
    train, test = split_by_reference(data.refs, test_fraction, seed)
    target = -data.mos if lower_is_better else data.mos
    logits = fit_logits(data.levels[train], target[train], steps=steps)
    uniform = np.zeros(data.levels.shape[1])
    report: Dict[str, object] = {"logits": logits.tolist(), "weights": fused(np.eye(len(logits)), logits).tolist(),
                                 "train_pairs": int(train.sum()), "test_pairs": int(test.sum()),
                                 "train_references": len(set(np.array(data.refs)[train])),
                                 "test_references": len(set(np.array(data.refs)[test]))}
    for name, mask in (("train", train), ("test", test)):
        if mask.sum() >= 3:
            report[name] = {
                "before": correlations(fused(data.levels[mask], uniform), data.mos[mask]),
                "after": correlations(fused(data.levels[mask], logits), data.mos[mask]),
            }
    return report


def direction(data: LevelScores) -> float:
    """+1 for a MOS (higher is better), -1 for a DMOS: as data.lower_is_better
    says, or where it is None, the sign of the mean level score's SRCC with
    the opinion scores (similarity scores rise with a MOS)."""
    if data.lower_is_better is not None:
        return -1.0 if data.lower_is_better else 1.0
    return 1.0 if correlations(data.levels.mean(axis=1), data.mos)["srcc"] >= 0 else -1.0


def fit_logits_across(sets: Sequence[LevelScores], steps: int = 500, lr: float = 0.05) -> np.ndarray:
    """Logits maximising the mean over `sets` of each set's Pearson correlation
    of the fused score with its own opinion scores, turned by its direction:
    datasets keep their own MOS scales and directions, none is pooled with
    another's."""
    parts = [(torch.tensor(d.levels, dtype=torch.float64), torch.tensor(direction(d) * d.mos, dtype=torch.float64))
             for d in sets]
    logits = torch.zeros(parts[0][0].shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = -torch.stack([_pearson(scores @ logits.softmax(0), target) for scores, target in parts]).mean()
        loss.backward()
        optimiser.step()
    return logits.detach().numpy()


def held_out_report(data: LevelScores, logits: np.ndarray, resamples: int, seed: int) -> Dict[str, object]:
    """Correlations on held-out pairs of the fitted weights, the uniform weights
    and level 0 alone, each with its bootstrap interval over reference contents."""
    columns = {"fitted": fused(data.levels, logits), "uniform": data.levels.mean(axis=1), "level0": data.levels[:, 0]}
    groups = significance.content_groups(data.refs)
    report = significance.bootstrap(columns, data.mos, groups, resamples, seed)
    return {"pairs": len(data.refs), "references": int(groups.max()) + 1,
            "columns": report["columns"],
            "fitted_against_level0": significance.paired_difference(report, "fitted", "level0"),
            "fitted_against_uniform": significance.paired_difference(report, "fitted", "uniform")}


def _subset(data: LevelScores, mask: np.ndarray) -> LevelScores:
    return LevelScores(list(np.array(data.refs)[mask]), data.mos[mask], data.levels[mask], data.lower_is_better,
                       data.direction_source)


def _weights(logits: np.ndarray) -> List[float]:
    return fused(np.eye(len(logits)), logits).tolist()


def fit_across_datasets(train: Dict[str, LevelScores], test: Dict[str, LevelScores], steps: int,
                        resamples: int, seed: int) -> Dict[str, object]:
    """Fit on every training file at once (see fit_logits_across); report each
    training and each test file's correlations with their intervals."""
    levels = {d.levels.shape[1] for d in list(train.values()) + list(test.values())}
    if len(levels) != 1:
        raise FusionError(f"expected results files of one level count, got {sorted(levels)} levels")
    logits = fit_logits_across(list(train.values()), steps)
    return {"logits": logits.tolist(), "weights": _weights(logits),
            "directions": {name: direction(d) for name, d in {**train, **test}.items()},
            "direction_sources": {name: d.direction_source for name, d in {**train, **test}.items()},
            "train": {name: held_out_report(d, logits, resamples, seed) for name, d in train.items()},
            "test": {name: held_out_report(d, logits, resamples, seed) for name, d in test.items()}}


def content_folds(refs: Sequence[str], folds: int, seed: int) -> List[np.ndarray]:
    """Boolean masks of `folds` held-out parts; each reference content falls in exactly one."""
    unique = sorted(set(refs))
    most = len(unique) // significance.MIN_CONTENTS
    if most < 2:
        raise FusionError(f"--folds: SCORES has {len(unique)} reference contents; k-fold needs at least "
                          f"{2 * significance.MIN_CONTENTS} ({significance.MIN_CONTENTS} in each held-out fold for "
                          "its p-values)")
    if not 2 <= folds <= most:
        raise FusionError(f"--folds: expected 2 to {most} folds ({significance.MIN_CONTENTS} reference contents at "
                          f"least in each, for its p-values; SCORES has {len(unique)}), got {folds}")
    random.Random(seed).shuffle(unique)
    fold_of = {ref: i % folds for i, ref in enumerate(unique)}
    return [np.array([fold_of[r] == k for r in refs]) for k in range(folds)]


def fit_k_fold(data: LevelScores, folds: int, seed: int, steps: int, resamples: int) -> Dict[str, object]:
    """k-fold over reference contents: fit on k - 1 folds, report on the held-out one,
    for every fold; then the weights fitted on everything (what is written)."""
    reports = []
    for k, test in enumerate(content_folds(data.refs, folds, seed)):
        logits = fit_logits_across([_subset(data, ~test)], steps)
        reports.append({"fold": k, "weights": _weights(logits),
                        **held_out_report(_subset(data, test), logits, resamples, seed)})
    logits = fit_logits_across([data], steps)
    return {"logits": logits.tolist(), "weights": _weights(logits), "folds": reports}
