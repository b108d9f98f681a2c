"""`msds eval`: score a dataset of (reference, distorted, MOS) pairs, resumably,
on one process or many (torchrun), and report the agreement with the MOS.

Work is cut into units of one reference and all its distorted images, so each
reference goes through the trunk once; a unit's images are scored in batches
of --batch-size, the same batches whatever the number of processes, so the
output does not depend on it. Finished batches are appended to a part file
per process (OUT.part<rank>) as they complete; a restarted run reads every
part file and skips what is done. When all pairs are done, rank 0 writes OUT
in the CSV's order and removes the part files.
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

from msds.correlation import correlations
from msds.datasets import Dataset, DatasetError
from msds.images import ImageError, load_image_for
from msds.metric import MSDS


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
    return ["ref", "dist", "mos", "score"] + [f"level{level}" for level in range(levels)]


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
        raise DatasetError(f"{out}: exists and does not hold this dataset's {levels}-level results; "
                           "remove it or choose another --out")
    return done


def progress_bar(total: int, enabled: bool, unit: str = "pair") -> tqdm:
    """A tqdm bar on stderr with rate and ETA; silent when disabled or when stderr is not a terminal."""
    return tqdm(total=total, unit=unit, disable=None if enabled else True, file=sys.stderr)


def format_row(pair: Pair, fused: float, levels: Sequence[float]) -> List[str]:
    return [pair.ref, pair.dist, pair.mos, repr(fused), *(repr(v) for v in levels)]


def score_unit(model: MSDS, unit: Sequence[Pair], done: Dict[int, List[str]], root: Path, batch_size: int,
               device: torch.device, skip_bad: bool, outcome: Outcome) -> Iterator[List[Pair]]:
    """Score one reference's pairs batch by batch, yielding each finished batch.

    Batches are cut from the whole unit, so a resumed run forms the same
    batches as an uninterrupted one; a batch with nothing left to do is
    passed over, one that was partly written is scored again whole. Within
    a batch, distorted images are scored in groups of one size (they need
    not share the reference's). A bad image raises ImageError naming it, or
    with skip_bad is recorded in outcome.skipped with the reason.
    """
    ref_path = root / unit[0].ref
    try:
        reference = model.precompute(load_image_for(ref_path, model.levels).to(device))
    except ImageError as err:
        if not skip_bad:
            raise
        outcome.skipped += [(pair, f"reference {err}") for pair in unit]
        return
    for start in range(0, len(unit), batch_size):
        if all(pair.index in done for pair in unit[start : start + batch_size]):
            continue
        by_size: Dict[Tuple[int, ...], List[Tuple[Pair, torch.Tensor]]] = {}
        for pair in unit[start : start + batch_size]:
            try:
                image = load_image_for(root / pair.dist, model.levels)
            except ImageError as err:
                if not skip_bad:
                    raise
                outcome.skipped.append((pair, str(err)))
                continue
            by_size.setdefault(tuple(image.shape), []).append((pair, image))
        batch = []
        for group in by_size.values():
            with torch.no_grad():
                scores = model.level_scores(torch.cat([image for _, image in group]).to(device), reference)
                fused = model.fuse(scores)
            for (pair, _), total, levels in zip(group, fused.double().tolist(), scores.double().tolist()):
                outcome.rows[pair.index] = format_row(pair, total, levels)
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


def evaluate(pairs: Sequence[Pair], root: Path, out: Path, model_args: dict, batch_size: int,
             device_arg: Optional[str], skip_bad: bool, progress: bool = True) -> Optional[dict]:
    """Run the evaluation of `pairs` (read_pairs, dataset_pairs); rank 0 returns the report, other ranks None."""
    rank, world, device = setup_distributed(device_arg)
    model = MSDS(**model_args).to(device)
    levels = model.levels
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
    return finish(out, pairs, levels, done, outcomes)


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
    agreement = correlations([float(r[3]) for r in scored], [float(r[2]) for r in scored]) if len(scored) >= 3 else {}
    # "pairs" counts the dataset's pairs, not only the scored ones correlations() saw.
    return {**agreement, "pairs": len(pairs), "scored": len(scored),
            "skipped": [{"ref": p.ref, "dist": p.dist, "reason": why} for p, why in skipped]}
