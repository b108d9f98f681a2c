"""`msds eval`: score a dataset of (reference, distorted, MOS) pairs, resumably,
on one process or many (torchrun), and report the agreement with the MOS.

Work is cut into units of one reference and all its distorted images, so each
reference goes through the trunk once; a unit's images are scored in batches
of --batch-size, the same batches whatever the number of processes, so the
output does not depend on it. Finished batches are appended to a part file
per process (OUT.part<rank>) as they complete; a restarted run reads every
part file and skips what is done. When all pairs are done, rank 0 writes OUT
in the CSV's order and removes the part files.

The settings of the run (metric, levels, weights and their SHA-256, fusion
file, saliency masks, image handling, msds version) and the direction of the
opinion scores are written first to OUT.meta.json (msds.evaluation.provenance); a
resumed run with other settings is refused unless told to restart.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from tqdm import tqdm

import numpy as np

from msds.evaluation import provenance
from msds.evaluation.correlation import correlations
from msds.evaluation.datasets import Dataset, DatasetError
from msds.images import ImageError, load_image_for, load_mask
from msds.metric.modules import MSDS, DeepSSIM
from msds.trunk.weights import weights_record

METRICS = ("msds", "deepssim", "lite")


@dataclass(frozen=True)
class Pair:
    index: int
    ref: str
    dist: str
    mos: str  # kept as written, so the output repeats it exactly


@dataclass
class Outcome:
    """What one process did: finished rows by pair index, skipped pairs, a fatal error."""

    rows: Dict[int, List[str]] = field(default_factory=dict)
    skipped: List[Tuple[Pair, str]] = field(default_factory=list)
    error: Optional[str] = None


def read_pairs(csv_path: Path) -> List[Pair]:
    """Pairs from a CSV with columns ref, dist, mos (paths relative to --root)."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{csv_path}: no such file") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = {"ref", "dist", "mos"} - set(reader.fieldnames or [])
    if missing:
        raise DatasetError(f"{csv_path}: expected columns ref, dist, mos; missing {', '.join(sorted(missing))}")
    pairs = []
    for line, row in enumerate(reader, start=2):
        ref, dist_, mos = (row[c].strip() if row[c] else "" for c in ("ref", "dist", "mos"))
        if not ref or not dist_:
            raise DatasetError(f"{csv_path}, line {line}: expected a ref and a dist path")
        try:
            float(mos)
        except ValueError:
            raise DatasetError(f"{csv_path}, line {line}: expected a number in mos, got {mos!r}") from None
        pairs.append(Pair(len(pairs), ref, dist_, mos))
    if not pairs:
        raise DatasetError(f"{csv_path}: no pairs")
    return pairs


def work_units(pairs: Sequence[Pair]) -> List[List[Pair]]:
    """Pairs grouped by reference, in order of first appearance."""
    units: Dict[str, List[Pair]] = {}
    for pair in pairs:
        units.setdefault(pair.ref, []).append(pair)
    return list(units.values())


def columns(levels: int) -> List[str]:
    """The header of an MSDS results file of `levels` levels (0 for DeepSSIM's: score only)."""
    return ["ref", "dist", "mos", "score"] + [f"level{level}" for level in range(levels)]


class Scorer:
    """The metric `msds eval` runs: MSDS (fused score and each level's) or
    DeepSSIM / DeepSSIM-Lite (one score), optionally saliency-calibrated.

    saliency: (REF_MASKS, DIST_MASKS), folders holding a mask for each image
    at the image's own path relative to the dataset root.
    """

    def __init__(self, metric: str, levels: int, weights, fusion: Optional[str],
                 saliency: Optional[Tuple[Path, Path]], device: torch.device) -> None:
        if metric not in METRICS:
            raise ValueError(f"--metric: expected one of {', '.join(METRICS)}, got {metric!r}")
        if saliency is not None and metric == "msds":
            raise ValueError("--saliency: applies to --metric deepssim or lite (the saliency-calibrated DeepSSIM), "
                             "got --metric msds")
        if fusion is not None and metric != "msds":
            raise ValueError(f"--fusion: applies to --metric msds, got --metric {metric}")
        self.metric, self.device = metric, device
        self.saliency = None if saliency is None else (Path(saliency[0]), Path(saliency[1]))
        if metric == "msds":
            self.model = MSDS(levels=levels, weights=weights, fusion=fusion).to(device)
        else:
            self.model = DeepSSIM(weights=weights, lite=metric == "lite").to(device)
        self.levels = self.model.levels  # pyramid levels images must allow
        self.level_columns = self.levels if metric == "msds" else 0

    def mask(self, which: int, relative: str, image: torch.Tensor, root: Path) -> Optional[torch.Tensor]:
        if self.saliency is None:
            return None
        return load_mask(self.saliency[which] / relative, image, root / relative).to(self.device)

    def reference(self, root: Path, relative: str):
        image = load_image_for(root / relative, self.levels)
        if self.metric == "msds":
            return self.model.precompute(image.to(self.device))
        return self.model.precompute(image.to(self.device), self.mask(0, relative, image, root))

    @torch.no_grad()
    def scores(self, images: torch.Tensor, masks: Optional[torch.Tensor], reference) -> List[List[float]]:
        """[fused, level0, ...] (MSDS) or [score] (DeepSSIM) per image, in float64."""
        if self.metric == "msds":
            levels = self.model.level_scores(images.to(self.device), reference)
            return torch.cat([self.model.fuse(levels)[:, None], levels], dim=1).double().tolist()
        return self.model.score(images.to(self.device), reference, masks)[:, None].double().tolist()


def part_files(out: Path) -> List[Path]:
    return sorted(out.parent.glob(out.name + ".part*"))


def read_done(out: Path, pairs: Sequence[Pair], levels: int) -> Dict[int, List[str]]:
    """Rows already finished: from an existing OUT, or from part files of an interrupted run."""
    width = len(columns(levels))
    if out.exists():
        return read_final(out, pairs, levels)
    done: Dict[int, List[str]] = {}
    for part in part_files(out):
        with open(part, newline="") as handle:
            for row in csv.reader(handle):
                # A run killed mid-write may leave a short last row: it is simply redone.
                if len(row) == width + 1 and row[0].isdigit() and int(row[0]) < len(pairs):
                    pair = pairs[int(row[0])]
                    if (pair.ref, pair.dist, pair.mos) == tuple(row[1:4]):
                        done[pair.index] = row[1:]
    return done


def read_final(out: Path, pairs: Sequence[Pair], levels: int) -> Dict[int, List[str]]:
    """The rows of a finished OUT; pairs skipped by that run are absent from it.
    Columns a user added after msds's (another metric's scores) are kept."""
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    done: Dict[int, List[str]] = {}
    position = 1
    for pair in pairs:
        if position < len(rows) and tuple(rows[position][:3]) == (pair.ref, pair.dist, pair.mos):
            done[pair.index] = rows[position]
            position += 1
    if not rows or rows[0][:len(columns(levels))] != columns(levels) or position != len(rows):
        raise DatasetError(f"{out}: exists and does not hold this dataset's results with these columns; "
                           "rerun with --restart, or choose another --out")
    return done


def progress_bar(total: int, enabled: bool, unit: str = "pair") -> tqdm:
    """A tqdm bar on stderr with rate and ETA; silent when disabled or when stderr is not a terminal."""
    return tqdm(total=total, unit=unit, disable=None if enabled else True, file=sys.stderr)


def format_row(pair: Pair, values: Sequence[float]) -> List[str]:
    return [pair.ref, pair.dist, pair.mos, *(repr(v) for v in values)]


def score_unit(model: Scorer, unit: Sequence[Pair], done: Dict[int, List[str]], root: Path, batch_size: int,
               device: torch.device, skip_bad: bool, outcome: Outcome) -> Iterator[List[Pair]]:
    """Score one reference's pairs batch by batch, yielding each finished batch.

    Batches are cut from the whole unit, so a resumed run forms the same
    batches as an uninterrupted one; a batch with nothing left to do is
    passed over, one that was partly written is scored again whole. Within
    a batch, distorted images are scored in groups of one size (they need
    not share the reference's). A bad image raises ImageError naming it, or
    with skip_bad is recorded in outcome.skipped with the reason.
    """
    try:
        reference = model.reference(root, unit[0].ref)
    except ImageError as err:
        if not skip_bad:
            raise
        outcome.skipped += [(pair, f"reference {err}") for pair in unit]
        return
    for start in range(0, len(unit), batch_size):
        if all(pair.index in done for pair in unit[start : start + batch_size]):
            continue
        by_size: Dict[Tuple[int, ...], List[Tuple[Pair, torch.Tensor, Optional[torch.Tensor]]]] = {}
        for pair in unit[start : start + batch_size]:
            try:
                image = load_image_for(root / pair.dist, model.levels)
                mask = model.mask(1, pair.dist, image, root)
            except ImageError as err:
                if not skip_bad:
                    raise
                outcome.skipped.append((pair, str(err)))
                continue
            by_size.setdefault(tuple(image.shape), []).append((pair, image, mask))
        batch = []
        for group in by_size.values():
            masks = None if group[0][2] is None else torch.cat([mask for _, _, mask in group])
            values = model.scores(torch.cat([image for _, image, _ in group]), masks, reference)
            for (pair, _, _), row in zip(group, values):
                outcome.rows[pair.index] = format_row(pair, row)
                batch.append(pair)
        if batch:
            yield batch


def setup_distributed(device_arg: Optional[str]) -> Tuple[int, int, torch.device]:
    """(rank, world size, device); starts torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device_arg or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def dataset_pairs(dataset: Dataset) -> List[Pair]:
    """A dataset reader's pairs as evaluate takes them."""
    return [Pair(index, ref, dist_, score) for index, (ref, dist_, score) in enumerate(dataset.pairs)]


def opinion_record(dataset: Optional[Dataset], lower_is_better: Optional[bool]) -> dict:
    """The direction of the opinion scores and who said so: the dataset reader,
    the user (--lower-is-better for a CSV), or nobody (left to `msds fit`)."""
    if dataset is not None:
        return {"score": dataset.score, "lower_is_better": dataset.lower_is_better,
                "source": f"the {dataset.name} reader" + (f" ({dataset.note})" if dataset.note else "")}
    if lower_is_better:
        return {"score": "DMOS", "lower_is_better": True, "source": "--lower-is-better"}
    return {"score": "MOS", "lower_is_better": None, "source": "not given (a CSV without --lower-is-better)"}


def evaluate(pairs: Sequence[Pair], root: Path, out: Path, model_args: dict, batch_size: int,
             device_arg: Optional[str], skip_bad: bool, progress: bool = True, restart: bool = False,
             opinion: Optional[dict] = None, source: str = "") -> Optional[dict]:
    """Run the evaluation of `pairs` (read_pairs, dataset_pairs); rank 0 returns the report, other ranks None.

    model_args: metric (msds, deepssim, lite; default msds), levels, weights,
    fusion, saliency. restart: remove OUT, its part files and its record
    first, instead of resuming them.
    """
    rank, world, device = setup_distributed(device_arg)
    args = {"metric": "msds", "levels": 3, "weights": "imagenet", "fusion": None, "saliency": None, **model_args}
    try:
        model = Scorer(args["metric"], args["levels"], args["weights"], args["fusion"], args["saliency"], device)
    except ValueError as err:
        raise DatasetError(str(err)) from None
    current = provenance.settings(args["metric"], model.level_columns or 1,
                                  weights_record(args["weights"], model.model.pretrained),
                                  args["fusion"], args["saliency"])
    if restart and rank == 0:
        for path in [out, provenance.meta_path(out), *part_files(out)]:
            path.unlink(missing_ok=True)
    if world > 1:
        dist.barrier()
    provenance.check_resume(out, current, out.exists() or bool(part_files(out)))
    record = {"settings": current, "opinion": opinion or opinion_record(None, None), "source": source,
              "pairs": len(pairs),
              "columns": {"score": f"{METRIC_LABELS[args['metric']]}, higher is more similar",
                          **{f"level{k}": f"MSDS level {k} (DeepSSIM at 1/{2 ** k} scale), higher is more similar"
                             for k in range(model.level_columns)}}}
    if rank == 0 and not provenance.meta_path(out).exists():
        provenance.write(out, record)
    levels = model.level_columns
    done = read_done(out, pairs, levels)
    mine = [unit for i, unit in enumerate(work_units(pairs)) if i % world == rank]
    pending = [unit for unit in mine if any(p.index not in done for p in unit)]
    meter = progress_bar(sum(p.index not in done for u in pending for p in u), enabled=progress and rank == 0)
    outcome = Outcome()
    if pending and not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out.parent / f"{out.name}.part{rank}", "a", newline="") as part:
            writer = csv.writer(part)
            try:
                for unit in pending:
                    for batch in score_unit(model, unit, done, root, batch_size, device, skip_bad, outcome):
                        writer.writerows([[pair.index, *outcome.rows[pair.index]] for pair in batch])
                        part.flush()
                        meter.update(sum(pair.index not in done for pair in batch))
            except (ImageError, ValueError) as err:
                outcome.error = str(err)
    meter.close()
    outcomes = [outcome]
    if world > 1:
        gathered: List[Optional[Outcome]] = [None] * world if rank == 0 else None
        dist.gather_object(outcome, gathered, dst=0)
        outcomes = gathered if rank == 0 else []
    if rank != 0:
        return None
    report = finish(out, pairs, levels, done, outcomes)
    report["provenance"] = provenance.read(out) or {"format": provenance.FORMAT, **record}
    return report


METRIC_LABELS = {"msds": "MSDS (fused over levels)", "deepssim": "DeepSSIM", "lite": "DeepSSIM-Lite"}


def finish(out: Path, pairs: Sequence[Pair], levels: int, done: Dict[int, List[str]],
           outcomes: Sequence[Outcome]) -> dict:
    errors = [o.error for o in outcomes if o.error]
    if errors:
        raise DatasetError("; ".join(errors) + " (finished pairs are kept; rerun with the same --out to resume)")
    rows = dict(done)
    skipped: List[Tuple[Pair, str]] = []
    for outcome in outcomes:
        rows.update(outcome.rows)
        skipped += outcome.skipped
    skipped.sort(key=lambda item: item[0].index)
    skipped_indices = {pair.index for pair, _ in skipped}
    missing = [p for p in pairs if p.index not in rows and p.index not in skipped_indices]
    if out.exists():  # an earlier run finished; the pairs it skipped are absent from OUT
        skipped += [(p, f"absent from {out} (skipped by the run that wrote it)") for p in missing]
        missing = []
    if missing:  # every pair must be scored or reported skipped
        raise DatasetError(f"{len(missing)} pairs were neither scored nor skipped (first: {missing[0].dist})")
    if not out.exists():
        temporary = out.parent / f"{out.name}.tmp"
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns(levels))
            writer.writerows(rows[p.index] for p in pairs if p.index in rows)
        os.replace(temporary, out)
        for part in part_files(out):
            part.unlink()
    scored = [rows[p.index] for p in pairs if p.index in rows]
    scores = np.array([float(r[3]) for r in scored])
    mos = np.array([float(r[2]) for r in scored])
    finite = np.isfinite(scores) & np.isfinite(mos)
    agreement = correlations(scores[finite], mos[finite]) if finite.sum() >= 3 else {}
    fresh = len({index for o in outcomes for index in o.rows} - set(done))
    # "pairs" counts the dataset's pairs; "correlated" the pairs the correlations used.
    return {**agreement, "pairs": len(pairs), "scored": len(scored), "scored_now": fresh,
            "reused": len(scored) - fresh, "correlated": int(finite.sum()), "left_out": int(np.sum(~finite)),
            "skipped": [{"ref": p.ref, "dist": p.dist, "reason": why} for p, why in skipped]}
