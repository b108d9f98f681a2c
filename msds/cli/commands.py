"""The `msds` command line: score image files, run the demo, trim weight files."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch

from msds.cli import demo
from msds.evaluation import plots
from msds.metric.checks import min_side
from msds.evaluation import significance
from msds.evaluation.analysis import DEFAULT_RESAMPLES, analyse, format_analysis, read_results
from msds.evaluation.datasets import DatasetError, read_dataset
from msds.evaluation.scoring import dataset_pairs, evaluate, opinion_record, progress_bar, read_pairs
from msds.evaluation.fusion_fit import (FusionError, fit_across_datasets, fit_fusion, fit_k_fold, read_level_scores, save_fusion,
                         settle_direction)
from msds.images import ImageError, files_by_stem, load_image_for, load_mask, pair_paths, to_image
from msds.metric.modules import MSDS, DeepSSIM
from msds.trunk.vgg16 import save_trimmed_weights
from msds.trunk.weights import WeightsArg, WeightsError, weights_label, weights_record


class CommandError(Exception):
    """A problem reported to the user as one line, without a traceback."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other error of the command."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def weights_arg(text: str) -> WeightsArg:
    return None if text == "random" else text


def trunk_label(model: Union[MSDS, DeepSSIM], text: str) -> str:
    """Which weights the trunk holds, in words (the file read and its SHA-256)."""
    return weights_label(weights_record(weights_arg(text), model.pretrained))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_arg(text: str) -> str:
    """--device: a device this torch can use now, or one line saying why not."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu, cuda or cuda:1, got {text!r}") from None
    if device.type == "cuda":
        if torch.version.cuda is None:
            raise argparse.ArgumentTypeError(f"{text}: this torch ({torch.__version__}) is a build without CUDA; "
                                             "use --device cpu, or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES?)")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: expected a CUDA device index below {count}, "
                                             f"the number of visible devices")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: MPS is not available with this torch on this machine")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"expected cpu, cuda[:N] or mps, got {text!r}")
    return text


def build_model(levels: int, weights: WeightsArg, device: str, fusion: Optional[str] = None) -> MSDS:
    try:
        return MSDS(levels=levels, weights=weights, fusion=fusion).to(device)
    except (WeightsError, FusionError, ValueError, TypeError) as err:
        raise CommandError(str(err)) from err


def build_deepssim(lite: bool, weights: WeightsArg, device: str) -> DeepSSIM:
    try:
        return DeepSSIM(weights=weights, lite=lite).to(device)
    except (WeightsError, ValueError, TypeError) as err:
        raise CommandError(str(err)) from err


METRIC_NAMES = {"msds": "MSDS", "deepssim": "DeepSSIM", "lite": "DeepSSIM-Lite"}


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def level_header(levels: int) -> List[str]:
    return [f"level{level}" for level in range(levels)] + ["MSDS"]


class ReferenceCache:
    """The trunk features of the last reference (with its saliency mask, if
    any), reused while pairs share it."""

    def __init__(self, model: Union[MSDS, DeepSSIM], device: str) -> None:
        self.model, self.device = model, device
        self.key: Optional[Tuple[Path, Optional[Path]]] = None

    def get(self, path: Path, mask: Optional[Path] = None):
        if (path, mask) != self.key:
            image = load_image_for(path, self.model.levels)
            if mask is None:
                self.features = self.model.precompute(image.to(self.device))
            else:
                self.features = self.model.precompute(image.to(self.device),
                                                      load_mask(mask, image, path).to(self.device))
            self.key = (path, mask)
        return self.features


@torch.no_grad()
def score_pair(model: MSDS, cache: ReferenceCache, ref: Path, dist: Path, device: str) -> torch.Tensor:
    """(L + 1,) level scores then the fused score of one file pair; the two may differ in size."""
    reference = cache.get(ref)
    x = load_image_for(dist, model.levels)
    levels = model.level_scores(x.to(device), reference)
    return torch.cat([levels[0], model.fuse(levels)]).double().cpu()


@torch.no_grad()
def score_deepssim_pair(model: DeepSSIM, cache: ReferenceCache, ref: Path, dist: Path,
                        masks: Optional[Tuple[Path, Path]], device: str) -> torch.Tensor:
    """(1,) DeepSSIM (or Lite) score of one file pair, saliency-calibrated when masks are given."""
    reference = cache.get(ref, None if masks is None else masks[0])
    x = load_image_for(dist, 1)
    mask_x = None if masks is None else load_mask(masks[1], x, dist).to(device)
    return model(x.to(device), reference, mask_x).double().cpu()


def mask_finder(ref_mask: Path, dist_mask: Path):
    """(reference, distorted) -> their saliency mask files: the given files, or
    in the given folders the mask of the image's stem, whatever its extension
    (a JPEG-distorted image's mask is often a PNG). ImageError if one is missing."""
    folders = {mask: files_by_stem(mask) for mask in (ref_mask, dist_mask) if mask.is_dir()}

    def mask_for(image: Path, mask: Path, role: str) -> Path:
        path = folders[mask].get(image.stem, mask / image.name) if mask.is_dir() else mask
        if not path.is_file():
            raise ImageError(f"{path}: no such file ({role} saliency mask for {image})")
        return path

    return lambda ref, dist: (mask_for(ref, ref_mask, "REF"), mask_for(dist, dist_mask, "DIST"))


def run_score(args: argparse.Namespace) -> None:
    metric = args.metric or ("deepssim" if args.saliency else "msds")
    if args.saliency and metric != "deepssim":
        raise CommandError(f"--saliency: applies to --metric deepssim (the saliency-calibrated DeepSSIM), "
                           f"got --metric {metric}")
    if args.json and args.format not in ("table", "json"):
        raise CommandError(f"--json: is --format json, got --format {args.format} too")
    output_format = "json" if args.json else args.format
    pairs = pair_paths(Path(args.ref), Path(args.dist))
    if metric == "msds":
        model = build_model(args.levels, weights_arg(args.weights), args.device, args.fusion)
        cache = ReferenceCache(model, args.device)

        def score(ref: Path, dist: Path, masks: None) -> torch.Tensor:
            return score_pair(model, cache, ref, dist, args.device)

        header, levels = level_header(args.levels), args.levels
    else:
        model = build_deepssim(metric == "lite", weights_arg(args.weights), args.device)
        cache = ReferenceCache(model, args.device)

        def score(ref: Path, dist: Path, masks: Optional[Tuple[Path, Path]]) -> torch.Tensor:
            return score_deepssim_pair(model, cache, ref, dist, masks, args.device)

        header, levels = [METRIC_NAMES[metric]], None
    masks_of = mask_finder(*map(Path, args.saliency)) if args.saliency else lambda ref, dist: None
    label = trunk_label(model, args.weights)
    results, skipped = [], []
    with progress_bar(len(pairs), enabled=len(pairs) > 1 and not args.no_progress) as bar:
        for ref, dist in pairs:
            try:
                results.append((ref, dist, score(ref, dist, masks_of(ref, dist))))
            except ImageError as err:
                if not args.skip_bad:
                    raise
                skipped.append((ref, dist, str(err)))
            bar.update(1)
    # Only results go to stdout (or --out); what describes the run goes to stderr.
    print(f"trunk weights: {label}" + ("; saliency-calibrated" if args.saliency else ""), file=sys.stderr)
    for ref, dist, reason in skipped:
        print(f"skipped: {ref} -> {dist}: {reason}", file=sys.stderr)
    if args.skip_bad:
        print(f"scored {len(results)} of {len(pairs)} pairs ({len(skipped)} skipped)", file=sys.stderr)
    if not results:
        raise CommandError(f"no pair could be scored ({len(skipped)} skipped)")
    text = format_scores(results, output_format, metric, header, levels, label, bool(args.saliency))
    if args.out:
        try:
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        except OSError as err:
            raise CommandError(f"--out: cannot write {args.out} ({err.strerror or err}); the results were not saved")
        print(f"results in {args.out}", file=sys.stderr)
    else:
        print(text)


def format_scores(results, output_format: str, metric: str, header: Sequence[str], levels: Optional[int],
                  label: str, saliency: bool) -> str:
    """The scored pairs as a table, CSV or JSON; the last value of each score row is the metric's score."""
    if output_format == "json":
        report = {"metric": metric, "weights": label, "levels": levels, "saliency": saliency, "pairs": []}
        for ref, dist, s in results:
            entry = {"ref": str(ref), "dist": str(dist), "score": s[-1].item()}
            if metric == "msds":
                entry["level_scores"] = s[:-1].tolist()
            report["pairs"].append(entry)
        return json.dumps(report, indent=2)
    rows = [[str(ref), str(dist), *(repr(v) if output_format == "csv" else f"{v:.6f}" for v in s.tolist())]
            for ref, dist, s in results]
    if output_format == "csv":
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([["ref", "dist", *header], *rows])
        return buffer.getvalue().rstrip("\n")
    return format_table(["ref", "dist", *header], rows)


def run_demo(args: argparse.Namespace) -> None:
    if args.size < min_side(args.levels):
        raise CommandError(f"--size: expected at least {min_side(args.levels)} for --levels {args.levels}, got {args.size}")
    weights = weights_arg(args.weights)
    try:
        model = MSDS(levels=args.levels, weights=weights, fusion=args.fusion).to(args.device)
    except WeightsError as err:
        if args.weights != "imagenet":
            raise CommandError(str(err)) from err
        print(
            "Pretrained VGG16 weights are not available, so the demo runs on the RANDOM (untrained) trunk and its "
            "scores say nothing about image quality.\n"
            f"  why: {err}\n",
            file=sys.stderr,
        )
        model = MSDS(levels=args.levels, weights=None, fusion=args.fusion).to(args.device)
    reference = demo.reference_image(args.size)
    labels, distorted = demo.distortion_ladder(reference)
    y = torch.from_numpy(reference).permute(2, 0, 1).unsqueeze(0)
    if args.save:
        plots.require_matplotlib()
        save_demo_images(Path(args.save), y[0], labels, distorted)
    with torch.no_grad():
        ref_features = model.precompute(y.to(args.device))
        scores = torch.cat(
            [model.level_scores(chunk.to(args.device), ref_features).cpu() for chunk in distorted.split(4)]
        )
        fused = model.fuse(scores.to(args.device)).cpu()
    table = torch.cat([scores, fused[:, None]], dim=1).double()
    if args.save:
        sheet = Path(args.save) / "contact_sheet.png"
        plots.save_contact_sheet(sheet, y[0], labels, distorted, table, trunk_label(model, args.weights))
    if args.json:
        rows = [
            {"distortion": name, "strength": strength, "level_scores": s[:-1].tolist(), "score": s[-1].item()}
            for (name, strength), s in zip(labels, table)
        ]
        print(json.dumps({"weights": trunk_label(model, args.weights), "levels": args.levels, "rows": rows}, indent=2))
        return
    print(f"MSDS demo: a generated {args.size}x{args.size} reference against four distortions at four strengths each")
    print(f"trunk weights: {trunk_label(model, args.weights)}; levels: {args.levels}; device: {args.device}\n")
    rows = [[name, strength, *(f"{v:.6f}" for v in s.tolist())] for (name, strength), s in zip(labels, table)]
    print(format_table(["distortion", "strength", *level_header(args.levels)], rows))
    print("\n1 means identical; with pretrained weights, scores fall as each distortion grows.")


def save_demo_images(folder: Path, reference: torch.Tensor, labels, distorted: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    to_image(reference).save(folder / "reference.png")
    for (name, strength), image in zip(labels, distorted):
        to_image(image).save(folder / f"{name}_{strength.replace('=', '')}.png")


def format_correlations(report: dict) -> str:
    if "srcc" not in report:
        return "too few scored pairs for correlations"
    pairs = report.get("correlated", report["pairs"])
    return (f"SRCC {report['srcc']:.4f}  KRCC {report['krcc']:.4f}  PLCC {report['plcc']:.4f}  "
            f"RMSE {report['rmse']:.4f}  ({pairs} pairs; PLCC/RMSE after {report['mapping']} mapping)")


def describe_weights(record: dict) -> str:
    """The trunk of a results record, in words; a random trunk said so plainly."""
    return weights_label(record["settings"]["weights"])


def run_eval(args: argparse.Namespace) -> None:
    if args.plot:
        plots.require_matplotlib()  # before the long part, not after it
    if (args.csv is None) == (args.dataset is None):
        raise CommandError("eval: expected either --csv CSV (with --root) or --dataset NAME ROOT")
    saliency = tuple(Path(p) for p in args.saliency) if args.saliency else None
    if saliency:
        for path, role in zip(saliency, ("REF_MASKS", "DIST_MASKS")):
            if not path.is_dir():
                raise CommandError(f"--saliency: expected {role} to be a folder of masks laid out like the "
                                   f"dataset's images, got {path}")
    model_args = {"metric": args.metric, "levels": args.levels, "weights": weights_arg(args.weights),
                  "fusion": args.fusion, "saliency": saliency}
    dataset = None
    if args.dataset:
        name, root = args.dataset
        dataset = read_dataset(name, Path(root), Path(args.meta) if args.meta else None,
                               Path(args.ref_root) if args.ref_root else None)
        pairs, root = dataset_pairs(dataset), Path(root)
        if args.lower_is_better and not dataset.lower_is_better:
            print(f"msds: warning: --lower-is-better contradicts the {dataset.name} reader, whose score is a "
                  f"{dataset.score} (higher is better); the reader's direction is recorded", file=sys.stderr)
        source = f"--dataset {name} {root}"
    else:
        pairs, root = read_pairs(Path(args.csv)), Path(args.root)
        source = f"--csv {args.csv} --root {root}"
    opinion = opinion_record(dataset, args.lower_is_better)
    try:
        report = evaluate(pairs, root, Path(args.out), model_args, args.batch_size, args.device, args.skip_bad,
                          progress=not args.no_progress, restart=args.restart, opinion=opinion, source=source)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if report is None:  # not rank 0
        return
    record = report["provenance"]
    if dataset is not None:
        report["dataset"] = {"name": dataset.name, "score": dataset.score, "lower_is_better": dataset.lower_is_better}
    report["random_trunk"] = record["settings"]["weights"]["name"] == "random"
    rows = read_results(Path(args.out))
    if args.resamples and len(rows) >= 3:
        report["analysis"] = analyse(rows, args.resamples, args.seed, args.compare, correction=args.correction)
    if args.plot:
        report["plot"] = str(plots.save_eval_plot(Path(args.plot), rows, report_levels(record), report.get("analysis"),
                                                  metric=METRIC_NAMES[record["settings"]["metric"]],
                                                  note=plot_note(record)))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for item in report["skipped"]:
        print(f"skipped: {item['ref']} -> {item['dist']}: {item['reason']}", file=sys.stderr)
    settings = record["settings"]
    print(f"metric: {METRIC_NAMES[settings['metric']]}"
          + (f", {settings['levels']} levels" if settings["metric"] == "msds" else "")
          + (f", fusion {settings['fusion']['file']}" if settings["fusion"] else "")
          + ("; saliency-calibrated" if settings["saliency"] else "") + f"; trunk weights: {describe_weights(record)}")
    print(f"{report['scored']} of {report['pairs']} pairs scored ({len(report['skipped'])} skipped; "
          f"{report['scored_now']} scored by this run, {report['reused']} reused from {args.out}); "
          f"per-pair results in {args.out}, their settings in {args.out}.meta.json")
    if report["left_out"]:
        print(f"{report['left_out']} scored pairs left out of the correlations (score or MOS not finite)")
    opinion = record["opinion"]
    direction = {True: "lower is better", False: "higher is better", None: "direction not given"}
    print(f"opinion scores: {opinion['score']} ({direction[opinion['lower_is_better']]}; {opinion['source']})")
    print(format_correlations(report))
    if "analysis" in report:
        print(format_analysis(report["analysis"]))
    if args.plot:
        print(f"plot: {report['plot']}")


def report_levels(record: dict) -> int:
    """Level columns of a results file: MSDS's levels, none for DeepSSIM's."""
    return record["settings"]["levels"] if record["settings"]["metric"] == "msds" else 0


def plot_note(record: dict) -> str:
    weights = record["settings"]["weights"]
    if weights["name"] == "random":
        return "RANDOM (untrained) trunk: scores say nothing about image quality"
    return f"trunk {weights['name']} (SHA-256 {weights['sha256'][:12]})"


def format_held_out(name: str, report: dict) -> str:
    """One results file's (or fold's) correlations of the fitted, uniform and level-0 scores, with intervals."""
    lines = [f"{name} ({report['pairs']} pairs, {report['references']} references):"]
    for column, stats in report["columns"].items():
        lines.append(f"   {column:8s} " + "  ".join(
            f"{stat.upper()} {value['value']:.4f} [{value['low']:.4f}, {value['high']:.4f}]"
            for stat, value in stats.items()))
    for key, label in (("fitted_against_level0", "level 0"), ("fitted_against_uniform", "uniform")):
        d = report[key]
        p = f"p = {d['p_value']:.4f}" if d["p_value"] is not None else f"no p-value: {d['refused']}"
        lines.append(f"   fitted against {label}: |SRCC| {d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}], "
                     + p)
    return "\n".join(lines)


def tell_direction(notes: Sequence[str], data) -> None:
    """Where each file's direction came from, and left-out rows, on stderr (stdout may be JSON)."""
    for note in notes:
        print(("msds: " if note.startswith("warning") else "") + note, file=sys.stderr)
    if data.left_out:
        print(f"{data.left_out} rows left out (a MOS or level score not finite)", file=sys.stderr)


def run_fit_across(args: argparse.Namespace) -> None:
    """--train FILES [--test FILES], or SCORES --folds K."""
    if args.train:
        train = {name: read_level_scores(Path(name)) for name in args.train}
        test = {name: read_level_scores(Path(name)) for name in args.test or []}
        for name, data in {**train, **test}.items():
            tell_direction(settle_direction(data, name, args.lower_is_better), data)
        report = fit_across_datasets(train, test, args.steps, args.resamples, args.seed)
        objective = "maximise the mean over the training files of each one's Pearson correlation with its MOS"
        parts = [(f"train {name}", r) for name, r in report["train"].items()]
        parts += [(f"test {name}", r) for name, r in report["test"].items()]
    else:
        data = read_level_scores(Path(args.scores))
        tell_direction(settle_direction(data, args.scores, args.lower_is_better), data)
        report = fit_k_fold(data, args.folds, args.seed, args.steps, args.resamples)
        objective = "maximise Pearson correlation with the MOS; k-fold over reference contents, then all of it"
        parts = [(f"fold {r['fold']} held out", r) for r in report["folds"]]
    info = {"objective": objective, "train": args.train or [args.scores], "test": args.test or [],
            "folds": args.folds, "seed": args.seed, "resamples": args.resamples, "report": report}
    save_fusion(Path(args.out), report["logits"], info)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"fusion weights: {', '.join(f'{w:.3f}' for w in report['weights'])}  (written to {args.out})")
    for name, part in parts:
        print(format_held_out(name, part))


def run_fit(args: argparse.Namespace) -> None:
    if args.train or args.folds:
        if args.train and (args.scores or args.folds):
            raise CommandError("fit: --train takes the place of SCORES and --folds")
        if args.folds and not args.scores:
            raise CommandError("fit: --folds needs SCORES, the results file to split")
        return run_fit_across(args)
    if args.test or not args.scores:
        raise CommandError("fit: expected SCORES (with --test-fraction or --folds), or --train FILES [--test FILES]")
    data = read_level_scores(Path(args.scores))
    tell_direction(settle_direction(data, args.scores, args.lower_is_better), data)
    report = fit_fusion(data, args.test_fraction, args.seed, args.steps, data.lower_is_better)
    report["lower_is_better"], report["direction_source"] = data.lower_is_better, data.direction_source
    info = {"objective": "maximise Pearson correlation of the fused score with the MOS on the training references",
            "source": str(args.scores), "test_fraction": args.test_fraction, "seed": args.seed,
            "lower_is_better": data.lower_is_better, "direction_source": data.direction_source, "report": report}
    save_fusion(Path(args.out), report["logits"], info)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    weights = ", ".join(f"{w:.3f}" for w in report["weights"])
    print(f"fusion weights: {weights}  (written to {args.out})")
    print(f"train: {report['train_pairs']} pairs of {report['train_references']} references; "
          f"test: {report['test_pairs']} pairs of {report['test_references']} references")
    for part in ("test", "train"):
        if part in report:
            print(f"{part} before (uniform): {format_correlations(report[part]['before'])}")
            print(f"{part} after (fitted):  {format_correlations(report[part]['after'])}")


def run_trim(args: argparse.Namespace) -> None:
    try:
        path = save_trimmed_weights(args.source, args.destination)
    except (WeightsError, OSError) as err:
        raise CommandError(str(err)) from err
    print(f"wrote the trunk's layers (up to relu5_1) to {path}")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def version_line() -> str:
    from msds import __version__

    try:
        import triton

        triton_version = f", triton {triton.__version__}"
    except Exception:  # triton is optional off Linux x86_64; a broken one is no reason to fail here
        triton_version = ""
    return f"msds {__version__} (torch {torch.__version__}{triton_version})"


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="msds", description="MSDS and DeepSSIM image-quality metrics.")
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True)

    def model_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--levels", type=positive_int, default=3, help="pyramid levels (default 3)")
        command.add_argument(
            "--weights",
            default="imagenet",
            help="imagenet (default; torchvision's VGG16 file, or $MSDS_VGG16_WEIGHTS), random, or a file path",
        )
        command.add_argument("--fusion", metavar="PATH", help="fusion weights written by `msds fit`")
        command.add_argument("--device", type=device_arg, default=default_device(),
                             help="torch device: cpu, cuda, cuda:N or mps (default: cuda if available)")
        command.add_argument("--json", action="store_true", help="print JSON instead of a table")

    score = commands.add_parser("score", help="score distorted images against references (sizes may differ)")
    score.add_argument("ref", help="reference image file, or a folder of them")
    score.add_argument("dist", help="distorted image file, or a folder (all scored against a REF file, "
                                    "or paired with a REF folder by file name); sizes need not match REF's")
    score.add_argument("--metric", choices=tuple(METRIC_NAMES),
                       help="msds (default), deepssim, or lite (DeepSSIM-Lite); --saliency implies deepssim")
    score.add_argument("--saliency", nargs=2, metavar=("REF_MASK", "DIST_MASK"),
                       help="saliency-calibrated DeepSSIM: binary mask images (0 = not salient, 1 or 255 = salient), each the size "
                            "of its own image; folders of masks named like the images for folders")
    score.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    score.add_argument("--format", choices=("table", "csv", "json"), default="table",
                       help="output: an aligned table (default), CSV or JSON (--json is --format json)")
    score.add_argument("--out", metavar="FILE", help="write the results to FILE instead of stdout")
    score.add_argument("--skip-bad", action="store_true",
                       help="skip pairs with missing or unreadable images, listing each on stderr, instead of stopping")
    model_options(score)
    score.set_defaults(run=run_score)

    demo_cmd = commands.add_parser("demo", help="score a generated image against a ladder of distortions")
    model_options(demo_cmd)
    demo_cmd.add_argument("--size", type=positive_int, default=256, help="reference image side (default 256)")
    demo_cmd.add_argument("--save", metavar="DIR",
                          help="also write the demo images and a contact sheet with their scores to DIR")
    demo_cmd.set_defaults(run=run_demo)

    evaluation = commands.add_parser("eval", help="score a dataset and correlate with its MOS, with intervals "
                                                  "and significance tests")
    evaluation.add_argument("--csv", help="CSV with columns ref, dist, mos")
    evaluation.add_argument("--root", default=".", help="folder the CSV's paths are relative to")
    evaluation.add_argument("--dataset", nargs=2, metavar=("NAME", "ROOT"),
                            help="a standard dataset in the layout it ships in, instead of --csv: tid2013, kadid10k, "
                                 "csiq, live, pipal, or pyiqa (with --meta)")
    evaluation.add_argument("--meta", help="--dataset pyiqa: pyiqa's meta-information CSV")
    evaluation.add_argument("--ref-root", help="--dataset pyiqa: folder of the references (default: ROOT)")
    evaluation.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                            help=f"bootstrap resamples of the reference contents for the intervals and tests "
                                 f"(default {DEFAULT_RESAMPLES}; 0: none)")
    evaluation.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    evaluation.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"),
                            help="compare score columns A and B of the results (repeatable; default: score "
                                 "against level0); a column added to the results CSV counts too")
    evaluation.add_argument("--metric", choices=tuple(METRIC_NAMES), default="msds",
                            help="msds (default: fused score and each level's), deepssim, or lite (DeepSSIM-Lite)")
    evaluation.add_argument("--saliency", nargs=2, metavar=("REF_MASKS", "DIST_MASKS"),
                            help="saliency-calibrated DeepSSIM (--metric deepssim or lite): folders of binary masks, "
                                 "each at its image's path relative to the dataset root")
    evaluation.add_argument("--lower-is-better", action="store_true",
                            help="--csv: the mos column holds DMOS (lower is better); recorded with the results")
    evaluation.add_argument("--correction", choices=significance.CORRECTIONS, default="holm",
                            help="multiple-comparison adjustment of the significance table (default holm)")
    evaluation.add_argument("--out", required=True,
                            help="per-pair results CSV (resumes an interrupted run of the same settings; "
                                 "its settings are recorded in OUT.meta.json)")
    evaluation.add_argument("--restart", action="store_true",
                            help="remove OUT, its part files and record, and score everything again")
    evaluation.add_argument("--batch-size", type=positive_int, default=16, help="distorted images per batch")
    evaluation.add_argument("--skip-bad", action="store_true",
                            help="skip pairs with missing or unreadable images, reporting each, instead of stopping")
    evaluation.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    evaluation.add_argument("--plot", metavar="FILE.png",
                            help="also draw MOS against score (fitted logistic, SRCC and PLCC; a panel per level)")
    model_options(evaluation)
    evaluation.set_defaults(run=run_eval)

    fit = commands.add_parser("fit", help="fit the fusion weights to MOS from `msds eval --out` results")
    fit.add_argument("scores", nargs="?", help="per-pair results CSV written by msds eval --out")
    fit.add_argument("--train", nargs="+", metavar="CSV", help="fit on these results files at once (other datasets)")
    fit.add_argument("--test", nargs="+", metavar="CSV", help="with --train: report on these results files")
    fit.add_argument("--folds", type=positive_int, help="k-fold over reference contents of SCORES instead of one split")
    fit.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                     help=f"bootstrap resamples for the intervals of --train / --folds reports (default {DEFAULT_RESAMPLES})")
    fit.add_argument("--out", required=True, help="fusion file to write (JSON)")
    fit.add_argument("--test-fraction", type=fraction, default=0.2, help="share of references held out (default 0.2)")
    fit.add_argument("--seed", type=int, default=0, help="seed of the reference split")
    fit.add_argument("--steps", type=positive_int, default=500, help="optimiser steps")
    fit.add_argument("--lower-is-better", action="store_true",
                     help="the MOS column holds DMOS (lower is better), for results without a record of it "
                          "(a record from msds eval is followed, with a warning if this contradicts it)")
    fit.add_argument("--json", action="store_true", help="print JSON")
    fit.set_defaults(run=run_fit)

    trim = commands.add_parser("trim-weights", help="save only the trunk's layers of a VGG16 weights file")
    trim.add_argument("source", help="torchvision VGG16 state dict (or 'imagenet')")
    trim.add_argument("destination", help="output file")
    trim.set_defaults(run=run_trim)
    return parser


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"msds: warning: {message}\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    shown, warnings.formatwarning = warnings.formatwarning, one_line_warning  # a line, not a source listing
    try:
        args.run(args)
    except (CommandError, ImageError, WeightsError, DatasetError, FusionError, plots.PlotError) as err:
        print(f"msds: error: {err}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = shown
    return 0
