"""The ``nasscam`` command.

Subcommands are registered in :data:`COMMANDS`: each is a ``(name, help, add_arguments, run)`` tuple,
where ``add_arguments(parser)`` declares its options and ``run(args)`` executes it and returns an exit
status. To add a subcommand, append a :class:`Command` to :data:`COMMANDS` (or call
:func:`register_command`) from this module.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Command", "COMMANDS", "register_command", "build_parser", "main"]


@dataclass(frozen=True)
class Command:
    """One ``nasscam`` subcommand.

    Args:
        name: the subcommand word.
        help: one-line summary shown by ``nasscam --help``.
        add_arguments: declares the subcommand's arguments on its parser.
        run: executes the parsed arguments; returns the exit status.
        description: longer text for ``nasscam NAME --help`` (defaults to ``help``).
        interrupted: what a Ctrl-C leaves behind, for the ``stopped:`` line (e.g. "nothing was written").
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""
    interrupted: str = ""


COMMANDS: list[Command] = []


def register_command(command: Command) -> Command:
    """Add (or replace, by name) a subcommand of ``nasscam``."""
    COMMANDS[:] = [c for c in COMMANDS if c.name != command.name] + [command]
    return command


#: what an interrupted command that builds its output aside (``staged_dir``) leaves behind
STAGED = "nothing was written (the output folder appears only once complete)."


# ---------------------------------------------------------------------------------------------- synth
def _synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the synthetic release into")
    p.add_argument("--images", type=int, default=48, help="number of annotated tiles (default: %(default)s)")
    p.add_argument("--patients", type=int, default=None,
                   help="number of patient folders, at most --images: each holds at least one tile (default: 8, or "
                   "--images when fewer)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: %(default)s)")
    p.add_argument(
        "--svs", action="store_true", help="also write each tile as a tiled JPEG Aperio-style .svs whole-slide TIFF"
    )
    p.add_argument("--min-size", type=int, default=96, help="smallest tile side in px (default: %(default)s)")
    p.add_argument("--max-size", type=int, default=640, help="largest tile side in px (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR (refused otherwise)")


def _synth_run(args: argparse.Namespace) -> int:
    from monai_nasscam.data.synth import generate_dataset

    summary = generate_dataset(
        args.out_dir,
        n_images=args.images,
        n_patients=args.patients,
        seed=args.seed,
        svs=args.svs,
        min_size=args.min_size,
        max_size=args.max_size,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    nuclei = ", ".join(f"{k} {v}" for k, v in summary["nuclei"].items())
    print(f"wrote {summary['n_images']} tiles of {summary['n_patients']} patients to {args.out_dir} ({nuclei})")
    return 0


# -------------------------------------------------------------------------------------------- prepare
def _prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", required=True, metavar="RAW",
                   help="MoNuSAC release folder (patient folders), or a folder with images/ and masks/ (see below)")
    p.add_argument("--out-dir", "--output-dir", required=True, metavar="PREP", help="output folder (must not exist)")
    p.add_argument(
        "--split",
        choices=("patient", "image"),
        default="patient",
        help="patient: no patient in two splits (default); image: the paper's random 120/39/50 image split",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default: %(default)s)")
    p.add_argument(
        "--no-stratify",
        dest="stratify",
        action="store_false",
        help="keep the first random split even when a split lacks a class (default: redraw until every split "
        "holds every annotated class)",
    )
    p.add_argument(
        "--stain",
        choices=("macenko", "reinhard", "none"),
        default="macenko",
        help="stain normalisation, fitted on the most tissue-rich training tiles (default: %(default)s)",
    )
    p.add_argument(
        "--on-error",
        choices=("skip", "fail"),
        default="skip",
        help="on a bad input file: report it and go on (skip, default) or stop with nothing written (fail)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--remap",
        nargs="+",
        metavar="SRC:DST",
        help="class-order remap of the written label ids: 'hovernet' (swaps 3 and 4) or pairs such as 3:4 4:3",
    )
    p.add_argument("--tif-bgr", action="store_true", help=".tif images (used when no .svs exists) are stored B,G,R")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count; 0: none)")
    p.add_argument("--mpp", type=float, default=None, metavar="UM_PER_PX",
                   help="microns per pixel of images whose files record none (JPEG, PNG, untagged TIFF), e.g. 0.25 at "
                   "40x; recorded in the manifest as the training resolution")
    g = p.add_argument_group(
        "image + mask folders", "RAW/images/NAME.ext beside RAW/masks/NAME.ext (PNG, TIFF or JPEG, paired by name); "
        "say what the masks hold with exactly one of --palette, --index-masks, --instance-masks")
    kind = g.add_mutually_exclusive_group()
    kind.add_argument("--palette", nargs="+", metavar="PALETTE",
                      help="colour masks: 'monusac' (its mirrors' colours), a JSON file {class: [r, g, b]}, or "
                      "CLASS=R,G,B pairs (background required; CLASS may be ignore)")
    kind.add_argument("--index-masks", action="store_true",
                      help="class-index masks (values per --mask-values; palette PNGs give their indices)")
    kind.add_argument("--instance-masks", metavar="CLASSES.csv",
                      help="instance-id masks, the class of each instance in a CSV with columns name,instance,class")
    g.add_argument("--mask-values", nargs="+", metavar="VALUE:CLASS",
                   help="index masks: the class of each mask value (default: 0:background 1:Epithelial 2:Lymphocyte "
                   "3:Neutrophil 4:Macrophage; CLASS may be ignore); a value not listed refuses the file")
    g.add_argument("--tolerance", type=float, default=None, metavar="RGB_DISTANCE",
                   help="colour masks: a pixel takes the nearest palette colour within this RGB distance; farther "
                   "pixels are left out of training and scoring (default: 100)")
    g.add_argument("--min-size", type=int, default=None, metavar="PX",
                   help="regions (instances) under this many pixels are specks and take the class of their "
                   "surroundings; 0 keeps all (default: 10)")
    g.add_argument("--mask-suffix", default=None, metavar="SUFFIX",
                   help="the mask of images/NAME.ext is masks/NAME<SUFFIX>.ext, e.g. _mask (default: none)")
    g.add_argument("--patient-regex", default=None, metavar="REGEX",
                   help="the patient of an image: the first group (or the match) of REGEX in its name (default: the "
                   "TCGA patient barcode where the name has one, else the name up to its last underscore)")


def _mask_spec(args: argparse.Namespace):
    """The :class:`~monai_nasscam.data.mask_folder.MaskFolderSpec` of the mask-folder options (``None`` without
    --palette / --index-masks / --instance-masks; a misplaced option is a ``ValueError``)."""
    from monai_nasscam.data.instance_table import read_instance_classes
    from monai_nasscam.data.mask_folder import DEFAULT_PATIENT_REGEX, MaskFolderSpec
    from monai_nasscam.data.palette import parse_palette, parse_value_map

    kind = "colour" if args.palette else "index" if args.index_masks else "instance" if args.instance_masks else None
    for option, value, wanted, flag in (("--mask-values", args.mask_values, "index", "--index-masks"),
                                        ("--tolerance", args.tolerance, "colour", "--palette")):
        if value is not None and kind != wanted:
            raise ValueError(f"{option} applies to {wanted} masks only ({flag})")
    if kind is None:
        given = [o for o, v in (("--min-size", args.min_size), ("--mask-suffix", args.mask_suffix),
                                ("--patient-regex", args.patient_regex)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} applies to image + mask folders: give --palette, --index-masks or "
                             "--instance-masks")
        return None
    return MaskFolderSpec(
        kind=kind,
        palette=parse_palette(args.palette) if kind == "colour" else None,
        values=parse_value_map(args.mask_values) if kind == "index" else None,
        instance_classes=read_instance_classes(args.instance_masks) if kind == "instance" else None,
        instance_table=args.instance_masks,
        tolerance=100.0 if args.tolerance is None else args.tolerance,
        min_size=10 if args.min_size is None else args.min_size,
        mask_suffix=args.mask_suffix or "",
        patient_regex=args.patient_regex or DEFAULT_PATIENT_REGEX,
    )


def _prepare_run(args: argparse.Namespace) -> int:
    from monai_nasscam.data.prepare import prepare_dataset

    masks = _mask_spec(args)
    for line in masks.describe() if masks else []:
        print(line)
    manifest = prepare_dataset(
        args.data_dir,
        args.out_dir,
        split=args.split,
        seed=args.seed,
        stratify=args.stratify,
        stain=args.stain,
        on_error=args.on_error,
        overwrite=args.overwrite,
        remap=args.remap,
        tif_bgr=args.tif_bgr,
        workers=args.workers,
        progress=sys.stderr.isatty(),
        masks=masks,
        mpp=args.mpp,
    )
    counts = manifest["counts"]
    parts = [f"{s} {counts[s]['images']} ({counts[s]['patients']} patient{'' if counts[s]['patients'] == 1 else 's'})"
             for s in ("training", "validation", "test")]
    skipped = len(manifest["skipped"])
    print(f"prepared {counts['total']['images']} images in {args.out_dir} ({', '.join(parts)}; {skipped} skipped)")
    total = counts["total"]
    if masks is not None:
        pixels = sum(total["pixels"].values())
        print(f"left out of training and scoring: {total['left_out_pixels']} pixels "
              f"({100 * total['left_out_pixels'] / max(pixels, 1):.2f}%); specks removed: {total['specks_removed']} "
              "(per image: manifest.json notes)")
    return 0


register_command(
    Command(
        "synth",
        "write a synthetic MoNuSAC-format dataset (patient folders, .tif/.svs + ImageScope .xml)",
        _synth_arguments,
        _synth_run,
        "Write a synthetic H&E nuclei dataset in the MoNuSAC 2020 on-disk format, for demos and tests.",
        interrupted=STAGED,
    )
)
register_command(
    Command(
        "prepare",
        "MoNuSAC release or image + mask folder -> masks, stain normalisation, split, PREP/datalist.json",
        _prepare_arguments,
        _prepare_run,
        "Rasterise the XML annotations (or read the masks of an image + mask folder), normalise the stain, split by "
        "patient or image, and write PREP/datalist.json and PREP/manifest.json. The output appears only when the run "
        "succeeds.",
        interrupted=STAGED,
    )
)


# -------------------------------------------------------------------------------------------- compare
def _overrides(pairs: Sequence[str] | None) -> dict:
    """``KEY=VALUE`` pairs -> dict, values parsed as YAML (``roi_size=[64,64]``, ``epochs=3``)."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    from monai_nasscam.compare import MODELS

    p.add_argument("--dataset-dir", required=True, metavar="PREP", help="a prepared dataset (nasscam prepare)")
    p.add_argument("--output-dir", required=True, metavar="OUT", help="runs, table.md, results.json and figures go here")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="MODEL",
                   help=f"any of {', '.join(f'{key} ({label})' for key, (label, _, _) in MODELS.items())} "
                   "(default: all); random: a uniformly random NAS-SCAM-P genotype per seed, retrained like the "
                   "searched models, that they are paired with")
    p.add_argument("--seeds", type=int, default=3, help="runs per model, seeds K..K+N-1 (default: %(default)s)")
    p.add_argument("--first-seed", type=int, default=0, metavar="K",
                   help="the first seed (default: %(default)s): e.g. --seeds 2 --first-seed 3 runs seeds 3 and 4, to "
                        "add seeds to a comparison in another folder")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="override for every workflow, e.g. roi_size=[64,64] num_workers=0")
    p.add_argument("--search-set", nargs="+", metavar="KEY=VALUE", help="search.yaml overrides, e.g. epochs=6 warmup_epochs=2")
    p.add_argument("--train-set", nargs="+", metavar="KEY=VALUE", help="train.yaml overrides, e.g. epochs=20 epoch_crops=128")
    p.add_argument("--evaluate-set", nargs="+", metavar="KEY=VALUE", help="evaluate.yaml overrides, e.g. eval_split=validation")
    p.add_argument("--jobs", type=int, default=1, help="model x seed runs at a time (default: %(default)s); on a CPU give each "
                   "its share of the cores with OMP_NUM_THREADS")
    p.add_argument("--verbose-runs", action="store_true", help="show each workflow's output instead of logging it to its folder")


def _compare_run(args: argparse.Namespace) -> int:
    from monai_nasscam.compare import run_comparison

    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1 (runs per model), got {args.seeds}.")
    if args.first_seed < 0:
        raise ValueError(f"--first-seed must be at least 0, got {args.first_seed}.")
    run_comparison(
        args.dataset_dir,
        args.output_dir,
        models=args.models,
        seeds=list(range(args.first_seed, args.first_seed + args.seeds)),
        common=_overrides(args.set),
        search=_overrides(args.search_set),
        train=_overrides(args.train_set),
        evaluate=_overrides(args.evaluate_set),
        quiet=not args.verbose_runs,
        jobs=args.jobs,
    )
    print((Path(args.output_dir) / "table.md").read_text())
    print(f"figures: {Path(args.output_dir) / 'dice_bars.png'}, {Path(args.output_dir) / 'panel.png'}")
    return 0


register_command(
    Command(
        "compare",
        "the paper's Table 2: search, retrain and evaluate every model x seed through the bundle, against random genotypes",
        _compare_arguments,
        _compare_run,
        "Run the models of the attention registry (monai_nasscam.networks.attentions: by default U-Net, DeepLab V3+, "
        "U-Net+CBAM, U-Net+scSE and NAS-SCAM-S/-P, synchronous and not; see --models) and a random NAS-SCAM-P "
        "genotype (model 'random': drawn from the seed, no search) for N seeds through the bundle's "
        "search, train and evaluate workflows; write OUT/table.md (pooled Dice per class, mean +- sd across seeds, "
        "and PQ; each searched model minus the random genotype of the same seed; each search's verdict and the "
        "agreement of the seeds' derived operations against chance), OUT/results.json, "
        "OUT/MODEL/consensus_genotype.json (majority vote over the seeds), OUT/dice_bars.png and OUT/panel.png. "
        "Finished runs are skipped, so an interrupted comparison resumes.",
        interrupted="finished runs are kept, and the same command continues.",
    )
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    spelling = ("Options may also be spelled with underscores instead of hyphens, as in monai.bundle run; "
                "-v and --debug go before or after COMMAND.")
    parser = argparse.ArgumentParser(
        prog="nasscam", description="NAS-SCAM for MONAI: data preparation and utilities.", epilog=spelling
    )

    def common(p: argparse.ArgumentParser, default: object) -> None:
        p.add_argument("-v", "--verbose", action="store_true", default=default, help="also log per-file notes")
        p.add_argument("--debug", action="store_true", default=default,
                       help="show the full traceback of an error or an interruption")

    common(parser, False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help, epilog=spelling)
        common(p, argparse.SUPPRESS)  # after COMMAND too; SUPPRESS keeps a flag given before it
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run, _interrupted=cmd.interrupted)
    return parser


def _hyphenated(argv: Sequence[str]) -> list[str]:
    """``--out_dir`` -> ``--out-dir`` (monai.bundle run's spelling of an option of this command; no ``nasscam``
    option has an underscore). The values are left alone, including the ``KEY=VALUE`` of ``--set``."""
    out = []
    for a in argv:
        if a.startswith("--") and "_" in a.split("=", 1)[0]:
            name, eq, value = a.partition("=")
            a = name.replace("_", "-") + eq + value
        out.append(a)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nasscam`` console script; returns the exit status.

    A bad input (a missing folder, a bad setting, a data error) ends the command with one line
    ``nasscam COMMAND: error: ...`` and status 1, a Ctrl-C with ``nasscam COMMAND: stopped: ...`` and status 130;
    ``--debug`` (or ``NASSCAM_TRACEBACK=1``) shows the full traceback instead. Any other error (a bug) keeps its
    traceback.
    """
    from monai_nasscam.errors import (
        INTERRUPTED_MESSAGE,
        INTERRUPTED_STATUS,
        DataError,
        RunInterrupted,
        full_traceback_wanted,
    )

    args = build_parser().parse_args(_hyphenated(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt as e:
        if args.debug or full_traceback_wanted():
            raise
        message = str(e) if isinstance(e, RunInterrupted) else f"{INTERRUPTED_MESSAGE} {args._interrupted}"
        print(f"nasscam {args.command}: stopped: {' '.join(message.split())}", file=sys.stderr)
        return INTERRUPTED_STATUS
    except (DataError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        if args.debug or full_traceback_wanted():
            raise
        print(f"nasscam {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
