"""`mmfuse export-onnx`: the fused embedder of a run (or preset) as an ONNX graph, with a parity check."""

from __future__ import annotations

import argparse

from .common import HelpFormatter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-onnx", help="export a run's fused embedder to ONNX and check it against PyTorch",
                       description="Export the fused embedder (batch, token and audio-frame axes dynamic) with "
                                   "torch.onnx.export, then embed sample records with onnxruntime and PyTorch and "
                                   "print their cosine. Needs onnx and onnxruntime.",
                       formatter_class=HelpFormatter)
    p.add_argument("--run", required=True, help="run directory, checkpoint directory or model preset name")
    p.add_argument("--checkpoint", default="best", help="checkpoint of a run directory")
    p.add_argument("--out", required=True, help="the .onnx file to write (serve it with mmfuse.load(run, "
                                                "backend='onnx', onnx_file=OUT) or mmfuse embed --backend onnx "
                                                "--onnx-file OUT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import load
    from ..errors import ConfigError
    from ..outputs import check_output_file
    from ..serving import cosine_parity

    check_output_file(args.out)  # before the model is loaded
    try:
        from ..onnx_export import export_onnx, parity_records
    except ImportError as err:
        raise ConfigError(f"ONNX export needs onnx and onnxruntime ({err.name} is missing): "
                          f"pip install onnx onnxruntime") from None
    embedder = load(args.run, checkpoint=args.checkpoint)
    path = export_onnx(embedder.model, embedder.preprocessors, args.out, embedder.fingerprint())
    records = parity_records(embedder.modalities)
    onnx = load(args.run, checkpoint=args.checkpoint, backend="onnx", onnx_file=path)
    parity = cosine_parity(embedder.embed(records), onnx.embed(records))
    print(f"mmfuse export-onnx: wrote {path}; cosine to PyTorch on {parity['n']} sample records: "
          f"min {parity['min']:.6f}, mean {parity['mean']:.6f}")
    return 0
