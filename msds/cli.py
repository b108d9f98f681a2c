"""The `msds` command line: score image files, run the demo, trim weight files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from msds import demo
from msds._checks import min_side
from msds.images import ImageError, load_image, pair_paths, to_image
from msds.metric import MSDS
from msds.weights import WeightsArg, WeightsError, save_trimmed_weights


class CommandError(Exception):
    """A problem reported to the user as one line, without a traceback."""


def weights_arg(text: str) -> WeightsArg:
    return None if text == "random" else text


def weights_label(model: MSDS, text: str) -> str:
    return text if model.pretrained else "random (untrained: scores are not meaningful)"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_model(levels: int, weights: WeightsArg, device: str) -> MSDS:
    try:
        return MSDS(levels=levels, weights=weights).to(device)
    except (WeightsError, ValueError, TypeError) as err:
        raise CommandError(str(err)) from err


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def level_header(levels: int) -> List[str]:
    return [f"level{level}" for level in range(levels)] + ["MSDS"]


@torch.no_grad()
def score_pair(model: MSDS, ref: Path, dist: Path, device: str) -> torch.Tensor:
    """(L + 1,) level scores then the fused score of one file pair."""
    y, x = load_image(ref), load_image(dist)
    if x.shape != y.shape:
        raise ImageError(
            f"{dist}: expected the size of {ref} ({y.shape[-1]}x{y.shape[-2]}), got {x.shape[-1]}x{x.shape[-2]}"
        )
    try:
        levels = model.level_scores(x.to(device), y.to(device))
    except ValueError as err:
        raise ImageError(f"{dist}: {err}") from err
    return torch.cat([levels[0], model.fuse(levels)]).double().cpu()


def run_score(args: argparse.Namespace) -> None:
    pairs = pair_paths(Path(args.ref), Path(args.dist))
    model = build_model(args.levels, weights_arg(args.weights), args.device)
    results = [(ref, dist, score_pair(model, ref, dist, args.device)) for ref, dist in pairs]
    if args.json:
        report = {
            "weights": weights_label(model, args.weights),
            "levels": args.levels,
            "pairs": [
                {"ref": str(ref), "dist": str(dist), "level_scores": s[:-1].tolist(), "score": s[-1].item()}
                for ref, dist, s in results
            ],
        }
        print(json.dumps(report, indent=2))
        return
    print(f"trunk weights: {weights_label(model, args.weights)}")
    rows = [[str(ref), str(dist), *(f"{v:.6f}" for v in s.tolist())] for ref, dist, s in results]
    print(format_table(["ref", "dist", *level_header(args.levels)], rows))


def run_demo(args: argparse.Namespace) -> None:
    if args.size < min_side(args.levels):
        raise CommandError(f"--size: expected at least {min_side(args.levels)} for --levels {args.levels}, got {args.size}")
    weights = weights_arg(args.weights)
    try:
        model = MSDS(levels=args.levels, weights=weights).to(args.device)
    except WeightsError as err:
        if args.weights != "imagenet":
            raise CommandError(str(err)) from err
        print(
            "Pretrained VGG16 weights are not available, so the demo runs on the RANDOM (untrained) trunk and its "
            "scores say nothing about image quality.\n"
            f"  why: {err}\n",
            file=sys.stderr,
        )
        model = MSDS(levels=args.levels, weights=None).to(args.device)
    reference = demo.reference_image(args.size)
    labels, distorted = demo.distortion_ladder(reference)
    y = torch.from_numpy(reference).permute(2, 0, 1).unsqueeze(0)
    if args.save:
        save_demo_images(Path(args.save), y[0], labels, distorted)
    with torch.no_grad():
        ref_features = model.precompute(y.to(args.device))
        scores = torch.cat(
            [model.level_scores(chunk.to(args.device), ref_features).cpu() for chunk in distorted.split(4)]
        )
        fused = model.fuse(scores.to(args.device)).cpu()
    table = torch.cat([scores, fused[:, None]], dim=1).double()
    if args.json:
        rows = [
            {"distortion": name, "strength": strength, "level_scores": s[:-1].tolist(), "score": s[-1].item()}
            for (name, strength), s in zip(labels, table)
        ]
        print(json.dumps({"weights": weights_label(model, args.weights), "levels": args.levels, "rows": rows}, indent=2))
        return
    print(f"MSDS demo: a generated {args.size}x{args.size} reference against four distortions of rising strength")
    print(f"trunk weights: {weights_label(model, args.weights)}; levels: {args.levels}; device: {args.device}\n")
    rows = [[name, strength, *(f"{v:.6f}" for v in s.tolist())] for (name, strength), s in zip(labels, table)]
    print(format_table(["distortion", "strength", *level_header(args.levels)], rows))
    print("\n1 means identical; with pretrained weights, scores fall as each distortion grows.")


def save_demo_images(folder: Path, reference: torch.Tensor, labels, distorted: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    to_image(reference).save(folder / "reference.png")
    for (name, strength), image in zip(labels, distorted):
        to_image(image).save(folder / f"{name}_{strength.replace('=', '')}.png")


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


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msds", description="MSDS and DeepSSIM image-quality metrics.")
    commands = parser.add_subparsers(dest="command", required=True)

    def model_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--levels", type=positive_int, default=3, help="pyramid levels (default 3)")
        command.add_argument(
            "--weights",
            default="imagenet",
            help="imagenet (default; torchvision's VGG16 file, or $MSDS_VGG16_WEIGHTS), random, or a file path",
        )
        command.add_argument("--device", default=default_device(), help="torch device (default: cuda if available)")
        command.add_argument("--json", action="store_true", help="print JSON instead of a table")

    score = commands.add_parser("score", help="score distorted images against references")
    score.add_argument("ref", help="reference image file, or a folder of them")
    score.add_argument("dist", help="distorted image file, or a folder paired with REF by file name")
    model_options(score)
    score.set_defaults(run=run_score)

    demo_cmd = commands.add_parser("demo", help="score a generated image against a ladder of distortions")
    model_options(demo_cmd)
    demo_cmd.add_argument("--size", type=positive_int, default=256, help="reference image side (default 256)")
    demo_cmd.add_argument("--save", metavar="DIR", help="also write the demo images as PNG files to DIR")
    demo_cmd.set_defaults(run=run_demo)

    trim = commands.add_parser("trim-weights", help="save only the trunk's layers of a VGG16 weights file")
    trim.add_argument("source", help="torchvision VGG16 state dict (or 'imagenet')")
    trim.add_argument("destination", help="output file")
    trim.set_defaults(run=run_trim)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.run(args)
    except (CommandError, ImageError, WeightsError) as err:
        print(f"msds: error: {err}", file=sys.stderr)
        return 1
    return 0
