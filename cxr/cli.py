"""The ``cxr`` command line: phantoms, train, eval, infer, bundle, dicom-node, token.

``cxr infer PATH OUTPUT`` is the in-process twin of ``POST /bulk_inference``: same
file discovery (recursive, ``.dcm`` in any case), same per-file rules, same output
layout and same job summary (also written to ``OUTPUT/.jobs/<job_id>.json``).
Exit status: 0 when the run completed (skipped files are reported, not failures),
2 for a usage problem (missing path, no DICOM found, bad model bundle).

``cxr bundle init MODEL OUT --labels ...`` writes a schema-2 bundle around a model file
(the label map and clinical status left as TODO for a person); ``cxr bundle check DIR
[--dicom FILE]`` loads and probes a bundle, prints its label map and time per image,
and exits 1 with the one-line reason on any problem (``docs/model-bundles.md``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("cxr")


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cmd_phantoms(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from demo.phantom_dicom import write_phantoms

    with tqdm(total=args.count, unit="file", disable=args.quiet) as bar:
        records = write_phantoms(
            Path(args.out),
            args.count,
            seed=args.seed,
            size=args.size,
            start=args.start,
            compression=args.compression,
            progress=bar.update,
        )
    print(f"wrote {len(records)} synthetic DICOM files to {args.out} (index: {Path(args.out) / 'phantoms.json'})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from demo.train import TrainConfig, main_summary, train
    from inference.bundle import DEFAULT_BUNDLE_DIR

    cfg = TrainConfig(
        output=Path(args.output) if args.output else DEFAULT_BUNDLE_DIR,
        seed=args.seed,
        train_images=args.images,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
    )
    manifest = train(cfg)
    print(main_summary(manifest))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from demo.evaluate import TARGETS, evaluate

    result = evaluate(Path(args.model) if args.model else None, count=args.count)
    if not args.json_only:
        print(f"{'condition':<20} {'AUROC':>7} {'pointing':>9}")
        for name, value in result["auroc"].items():
            point = result["pointing_by_condition"].get(name)
            shown = "    n/a" if value is None else f"{value:>7.3f}"
            print(f"{name:<20} {shown} {'' if point is None else f'{point:>9.3f}'}")
        print(f"{'mean AUROC':<20} {result['mean_auroc']:>7.3f}   (target >= {TARGETS['mean_auroc']})")
        print(
            f"{'pointing accuracy':<20} {result['pointing_accuracy']:>7.3f}   "
            f"(target >= {TARGETS['pointing_accuracy']}, {result['pointing_pairs']} lesions)"
        )
    # Last line: one JSON object, as documented.
    print(
        json.dumps(
            {
                "auroc": result["auroc"],
                "mean_auroc": result["mean_auroc"],
                "pointing_accuracy": result["pointing_accuracy"],
            }
        )
    )
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from tqdm import tqdm

    from engine.discovery import iter_dicom_files
    from engine.pipeline import process_file
    from engine.summary import summarise, summary_path, write_summary_file
    from inference.bundle import read_bundle
    from inference.dicom_read import ReadOptions
    from inference.errors import BundleError
    from inference.predict import Predictor, configure_tensorflow
    from reports.publish import folder_owners

    src, out = Path(args.path), Path(args.output)
    if not src.exists():
        print(f"error: input path does not exist: {src}", file=sys.stderr)
        return 2
    files = list(iter_dicom_files(src))
    if not files:
        print(f"error: no DICOM images (*.dcm) found in {src}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    configure_tensorflow()
    try:
        predictor = Predictor(read_bundle(Path(args.model) if args.model else None))
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    job_id = args.job_id or uuid.uuid4().hex
    options = ReadOptions.from_env()  # once per run, not once per file
    records: list[dict[str, Any]] = []
    for path in tqdm(files, unit="file", disable=args.quiet):
        records.append(
            process_file(
                path,
                out,
                predictor,
                job_id=job_id,
                layout=args.layout,
                options=options,
                dicom_outputs=args.dicom_outputs,
            )
        )
    folders = [r["folder"] for r in records if r["status"] == "processed"]
    summary = summarise(records, job_id=job_id, total=len(files), owners=folder_owners(out, folders))
    write_summary_file(summary_path(out, job_id), summary)
    print(
        f"job {job_id}: {summary['total']} files, {summary['processed']} processed, "
        f"{len(summary['skipped'])} skipped, {len(summary['superseded'])} superseded"
    )
    for skip in summary["skipped"]:
        print(f"  skipped {skip['path']}: {skip['reason']} ({skip['detail']})")
    for sup in summary["superseded"]:
        print(f"  superseded {sup['path']} (folder kept {sup['kept']})")
    if predictor.bundle.demo:
        print("note: results come from the DEMO model, trained on synthetic images: NOT FOR CLINICAL USE")
    elif predictor.bundle.clinical_status != "cleared":
        print(
            f"note: model {predictor.bundle.name} {predictor.bundle.version} has clinical status "
            f"{predictor.bundle.clinical_status!r} (operating point {predictor.bundle.operating_point})"
        )
    return 0


def cmd_bundle_init(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from inference.bundle_tools import init_bundle
    from inference.errors import BundleError

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    try:
        manifest = init_bundle(
            Path(args.model),
            Path(args.out),
            labels,
            preset=args.preset,
            activation=args.activation,
            name=args.name,
            signature=args.signature,
        )
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {Path(args.out) / 'manifest.json'}: {manifest['format']}, input {manifest['input']['size']} x "
        f"{manifest['input']['channels']}, Grad-CAM layer {manifest['gradcam']['layer']!r}, "
        f"{len(labels)} labels"
    )
    print(
        "TODO before use: fill in label_map (each label -> one of the 11 conditions, or null), "
        "clinical_status, intended_use, provenance; check input.normalization, resize and interpolation "
        f"against the training code; then run `cxr bundle check {args.out}`"
    )
    return 0


def cmd_bundle_check(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from inference.bundle_tools import check_bundle
    from inference.errors import BundleError

    try:
        report = check_bundle(Path(args.dir), dicom=Path(args.dicom) if args.dicom else None)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    ident = report["identity"]
    print(
        f"bundle {report['bundle']}: {ident['name']} {ident['version']} ({ident['clinical_status']}), schema "
        f"{ident['manifest_schema']}, {report['format']}"
    )
    inp = report["input"]
    print(
        f"input: {inp['size'][0]} x {inp['size'][1]} x {inp['channels']}, {inp['resize']}/{inp['interpolation']}, "
        f"normalization {inp['normalization']}; output activation {report['activation']}"
    )
    print(f"operating point: {ident['operating_point']} (available: {', '.join(report['operating_points'])})")
    print("label map:")
    for label in report["labels"]:
        entry = report["label_map"].get(label, {})
        target = entry.get("condition")
        how = entry.get("relation") or ""
        if target and not entry.get("use_for_condition"):
            how += ", not used for the condition"
        shown = f"-> {target} ({how})" if target else "-> (unmapped: reported under other findings)"
        print(f"  {label:<28} {shown}  threshold {report['thresholds'][label]:.3f}")
    print(f"not assessed: {', '.join(report['not_assessed']) or 'none'}")
    print(f"heatmap: {report['heatmap']['method']} at {report['heatmap']['layer']}")
    for name, result in report["images"].items():
        print(
            f"{name}: {result['forward_gradcam_ms']:.1f} ms per image (forward + Grad-CAM), heatmap "
            f"{result['heatmap_grid']} for {result['heatmap_label']}; probabilities finite, in [0, 1]"
        )
    print(f"model load {report['load_s']:.2f} s; OK")
    return 0


def cmd_dicom_node(args: argparse.Namespace) -> int:
    import dataclasses

    from workers.dicom_node import NodeConfigError, NodeSettings, serve

    try:
        settings = NodeSettings.from_env()
    except NodeConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("workers.dicom_node").setLevel(logging.INFO)  # one line per association and study
    overrides = {k: v for k, v in (("ae_title", args.ae_title), ("port", args.port)) if v is not None}
    return serve(dataclasses.replace(settings, **overrides))


def cmd_token_issue(args: argparse.Namespace) -> int:
    from api import create_app
    from api.auth import issue_token
    from api.config import ConfigError

    try:
        token = issue_token(create_app(), args.subject, args.days, admin=args.admin)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(token)  # the token alone, for $(cxr token issue ...)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    import jwt

    from api import create_app
    from api.auth import revoke
    from api.config import ConfigError

    try:
        app = create_app()
        jti = revoke(app.extensions["cxr_redis"], app.config["CXR_JWT_SECRET"], args.token)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except jwt.InvalidTokenError:
        print("error: that token was not signed with this server's secret", file=sys.stderr)
        return 2
    print(f"revoked {jti}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description="CXR Engine command line")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantoms", help="write synthetic chest radiographs as DICOM files")
    p.add_argument("out")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--size", type=int, default=2048, help="rows and columns (default 2048)")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--start", type=int, default=0, help="first phantom index")
    p.add_argument("--compression", choices=("mixed", "none", "j2k"), default="mixed")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_phantoms)

    p = sub.add_parser("train", help="train the demo model on phantoms and write a bundle")
    p.add_argument("--output", help="bundle folder (default: the shipped demo bundle)")
    p.add_argument("--seed", type=int, default=20261129)
    p.add_argument("--images", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max-minutes", type=float, default=28.0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a bundle on a held-out synthetic set")
    p.add_argument("--model", help="bundle folder (default: CXR_MODEL_DIR or the demo bundle)")
    p.add_argument("--count", type=int, default=600)
    p.add_argument("--json", dest="json_only", action="store_true", help="print only the JSON line")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("infer", help="run a file or folder in-process, like bulk inference")
    p.add_argument("path")
    p.add_argument("output")
    p.add_argument("--layout", choices=("patient", "instance"), default="patient")
    p.add_argument("--model", help="bundle folder (default: CXR_MODEL_DIR or the demo bundle)")
    p.add_argument("--job-id", help="job id to record (default: random)")
    p.add_argument(
        "--dicom-outputs",
        action="store_true",
        help="also write <pid>_sc.dcm, <pid>_sr.dcm and <pid>_report_pdf.dcm (heatmap SC, TID 1500 SR, PDF)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_infer)

    bundle = sub.add_parser("bundle", help="write or check a model bundle (docs/model-bundles.md)")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", required=True)
    p = bundle_sub.add_parser("init", help="write a schema-2 bundle around a .keras/.h5 file or SavedModel folder")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--labels", required=True, help="the model's output labels, comma-separated, in output order")
    p.add_argument("--preset", default="unit", help="normalization preset (unit, keras_tf, keras_torch, ...)")
    p.add_argument(
        "--activation",
        choices=("sigmoid", "softmax", "none"),
        default="none",
        help="what the engine applies to the model's output (none: it gives probabilities)",
    )
    p.add_argument("--name", help="bundle name (default: the model file's name)")
    p.add_argument("--signature", help="SavedModel serving signature (default serving_default)")
    p.set_defaults(func=cmd_bundle_init)
    p = bundle_sub.add_parser("check", help="load and probe a bundle; exit 1 with the reason on any problem")
    p.add_argument("dir")
    p.add_argument("--dicom", help="also run this DICOM file through the engine")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=cmd_bundle_check)
    p = sub.add_parser(
        "dicom-node",
        help="receive studies by DICOM C-STORE and submit them as jobs (CXR_DICOM_* settings, see docs/pacs.md)",
    )
    p.add_argument("--ae-title", help="AE title (default CXR_DICOM_AE_TITLE, CXR_ENGINE)")
    p.add_argument("--port", type=int, help="port (default CXR_DICOM_PORT, 11112)")
    p.set_defaults(func=cmd_dicom_node)

    token = sub.add_parser("token", help="issue or revoke API tokens (needs CXR_JWT_SECRET and Redis)")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    p = token_sub.add_parser("issue", help="print a new token for SUBJECT, alone on stdout")
    p.add_argument("--subject", required=True, help="who the token is for (a system or a person)")
    p.add_argument("--days", type=float, default=None, help="lifetime in days (default CXR_TOKEN_DAYS, 30)")
    p.add_argument(
        "--admin",
        action="store_true",
        help="the token reads every job (GET /jobs/<id>); without it, only the jobs it sent itself",
    )
    p.set_defaults(func=cmd_token_issue)
    p = token_sub.add_parser("revoke", help="deny a token from now on, by its jti or the token itself")
    p.add_argument("token", metavar="JTI_OR_TOKEN")
    p.set_defaults(func=cmd_token_revoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
