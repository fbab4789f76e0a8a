"""``entpruner export``: a model as ONNX, AOTInductor, TensorRT, the reference code's files or
a diffusers pipeline, checked against PyTorch."""

from __future__ import annotations

import argparse

from entpruner_sdk.cli import common


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``export`` subcommand: the model, the format, the batch profile and the checks."""
    p = common.command(
        sub, "export", "Export a model for deployment (ONNX, AOTInductor, TensorRT, "
        "diffusers).",
        """\
        entpruner export --model runs/quickstart/dit-digits-pruned --out exports/dit-onnx
        entpruner export --model dit-digits --format onnx-fp16 --out exports/fp16 --verify
        entpruner export --model runs/sit --format aoti --out exports/sit-aoti
        entpruner export --model runs/dit --format tensorrt --batch 1,8,32 --out exports/trt
        entpruner export --model runs/sit --format reference --out exports/sit-ref  # SiT repo
        entpruner export --model runs/xl-d14 --format diffusers --out exports/xl-d14-pipeline
        entpruner sample --model exports/dit-onnx --cfg 2 --out onnx.png   # run an export
        """)
    from entpruner_sdk.export import FORMATS

    p.add_argument("--model", required=True,
                   help="bundled teacher name, model path, or the Hub name of a DiTPipeline "
                        "the Hugging Face cache holds (facebook/DiT-XL-2-256)")
    common.released_options(p)
    p.add_argument("--format", default="onnx", choices=FORMATS, help="what to export to")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.add_argument("--verify", action="store_true",
                   help="print the parity table (exports are always checked unless --no-check)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check")
    p.add_argument("--batch", default="1,8,32",
                   help="min,opt,max batch (TensorRT profile, AOTInductor max, parity opt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--exporter", choices=["dynamo", "torchscript"],
                   help="ONNX exporter (default: dynamo, the torch.export-based one, where "
                        "torch 2.5+ and onnxscript run it; the TorchScript tracer otherwise)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"],
                   help="TensorRT / torch-tensorrt precision (default fp16; bf16 only for "
                        "torch-tensorrt)")
    p.add_argument("--no-guided", action="store_true",
                   help="ONNX: skip the classifier-free-guidance graph")
    common.vae_option(p, "is exported too (vae_decoder.onnx; with --format diffusers, the "
                      "pipeline's vae/), so the export samples images on its own")
    common.run_options(p, precision=False)  # traced from, and checked against, fp32


def run(args: argparse.Namespace) -> int:
    """Export ``--model`` in ``--format`` to ``--out``, checked against PyTorch unless
    ``--no-check`` (``--verify`` prints the checks); 0 on success."""
    from entpruner_sdk.export import export
    from entpruner_sdk.export.parity import format_checks

    try:
        batch = tuple(int(v) for v in args.batch.split(","))
    except ValueError as error:
        raise ValueError(f"--batch must be min,opt,max integers, got {args.batch!r}") from error
    model = common.released_model(args)
    device = None if args.device == "auto" else args.device
    result = export(model, args.out, args.format, verify=not args.no_check, batch=batch,
                    overwrite=args.overwrite, guided=not args.no_guided,
                    exporter=args.exporter, precision=args.precision, device=device,
                    vae=args.vae)
    if args.verify and result.parity:
        print(format_checks(result.parity))
    files = ", ".join(sorted(set(result.files.values())))
    checked = "parity checked" if result.parity else "not checked"
    print(f"{args.format} export ({checked}) -> {result.directory}: {files}")
    return 0
