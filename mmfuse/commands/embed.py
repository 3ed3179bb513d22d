"""`mmfuse embed`: item embeddings from a run (or a preset) for a manifest or shards -> Parquet + MMRec files."""

from __future__ import annotations

import argparse

from .columns import add_manifest_options
from .common import HelpFormatter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed", help="write item embeddings (fused + per modality) as Parquet parts and MMRec .npy matrices",
        description="Embed every item of a manifest (or of shards) with a fine-tuned run or a model preset. Writes "
                    "OUT/parts/*.parquet (id, fused, one column per modality), OUT/fused_feat.npy and "
                    "OUT/<modality>_feat.npy with OUT/i_id_mapping.csv (rows aligned), OUT/rejects.jsonl and "
                    "OUT/metadata.json. Run the same command again to resume an interrupted export.",
        formatter_class=HelpFormatter)
    p.add_argument("--run", required=True, help="run directory, checkpoint directory or model preset name")
    p.add_argument("--checkpoint", default="best", help="checkpoint of a run directory")
    add_manifest_options(p, key_help="id column")
    p.add_argument("--shards", help="instead of --manifest: a shard directory with a dataset.json")
    p.add_argument("--splits", help="with --shards: comma-separated splits, in this order (default: all)")
    p.add_argument("--out", required=True, help="output directory (new, or an interrupted export to resume)")
    p.add_argument("--modalities", help="embed from these modalities only, e.g. text,image (default: all)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise every vector")
    p.add_argument("--bad-media", choices=["skip", "absent"], default="skip",
                   help="a missing or unreadable media file: skip the row, or embed it with that modality absent")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row (one-line error)")
    p.add_argument("--part-size", type=int, default=10_000, help="input rows per Parquet part (unit of resume)")
    p.add_argument("--batch-size", type=int, default=128, help="items per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--backend", choices=["fp32", "bf16", "int8", "onnx", "auto"], default="fp32",
                   help="bf16: bfloat16 weights (fast on CPUs with avx512_bf16 / AMX and on GPUs); auto: bf16 "
                        "where it is fast, else fp32; int8: int8 dynamic quantisation of the encoders' attention "
                        "projections (CPU); onnx: onnxruntime (CPU, the onnx extra) on --onnx-file or a cached export")
    p.add_argument("--precision", default="fp32",
                   help="with --backend fp32: fp32, bf16, fp16 (CUDA) or auto, the autocast its fp32 weights run "
                        "under (vectors are written as float32 either way)")
    p.add_argument("--onnx-file", help="with --backend onnx: a graph written by mmfuse export-onnx")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import load
    from ..errors import DataError
    from ..export import ExportOptions, ManifestSource, ShardSource, export_embeddings
    from ..outputs import check_output_dir

    if bool(args.manifest) == bool(args.shards):
        raise DataError("mmfuse embed needs exactly one of --manifest FILE or --shards DIR")
    check_output_dir(args.out)  # before the model is loaded
    if args.manifest:
        source = ManifestSource(args.manifest, args.root, args.key, [c for c in args.text.split(",") if c],
                                args.image or None, args.audio or None)
    else:
        source = ShardSource(args.shards, args.splits.split(",") if args.splits else None)
    options = ExportOptions(out=args.out, part_size=args.part_size, normalize=args.normalize,
                            modalities=args.modalities.split(",") if args.modalities else None,
                            bad_media=args.bad_media, strict=args.strict, progress=not args.no_progress)
    embedder = load(args.run, checkpoint=args.checkpoint, device=args.device, batch_size=args.batch_size,
                    backend=args.backend, onnx_file=args.onnx_file, precision=args.precision)
    meta = export_embeddings(embedder, source.items(), options, source.describe(), total=source.count())
    print(summary(meta, args.out))
    return 0


def summary(meta: dict, out: str) -> str:
    """One paragraph: what was written, what was refused and why."""
    counts = meta["counts"]
    names = ", ".join(meta["dims"])
    text = (f"mmfuse embed: {counts['exported']} of {counts['input_rows']} items -> {out} ({meta['dim']}-d "
            f"{names}; {meta['parts']['count']} part(s), {meta['parts']['resumed']} resumed)")
    if counts["rejected"]:
        reasons = ", ".join(f"{k} x{n}" for k, n in counts["reasons"].items())
        text += f"; refused {counts['rejected']} rows, listed in {out}/rejects.jsonl: {reasons}"
    if counts["exported_with_a_modality_dropped"]:
        text += f"; {counts['exported_with_a_modality_dropped']} exported with a bad modality left out"
    return text
