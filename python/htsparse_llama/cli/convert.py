"""`convert`: a Hugging Face checkpoint directory -> text GGUF (+ mmproj)."""

from __future__ import annotations

import argparse
import sys

from htsparse_convert import convert_checkpoint

_TYPES = ("f32", "f16", "bf16", "q8_0", "Q4_K_M", "Q5_K_M", "Q6_K")


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a Hugging Face checkpoint to GGUF (+ mmproj)",
        description="Convert a Hugging Face safetensors checkpoint directory (Qwen2.5-VL, Qwen2-VL, SmolVLM2, "
        "Qwen2, Llama) to the GGUF files llama.cpp loads: the text model, and an mmproj file for the "
        "vision tower of a VLM. Needs torch: pip install 'htsparse-llama[convert]'.",
    )
    p.add_argument("model_dir", help="checkpoint directory (config.json, tokenizer files, *.safetensors)")
    p.add_argument("-o", "--outdir", default=None, help="where to write (default: the checkpoint directory)")
    p.add_argument(
        "--outtype",
        default="f16",
        choices=_TYPES,
        help="tensor type: f32, f16, bf16, q8_0, or a llama.cpp k-quant mix (default: f16)",
    )
    p.add_argument("--name", default=None, help="file name stem (default: the directory's name)")
    p.add_argument("--no-mmproj", action="store_true", help="write the text model only")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("-t", "--threads", type=int, default=0, help="threads for k-quants (default: all)")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's log while it quantizes")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        result = convert_checkpoint(
            args.model_dir,
            args.outdir,
            out_type=args.outtype,
            name=args.name,
            mmproj=False if args.no_mmproj else None,
            force=args.force,
            n_threads=args.threads,
            progress=sys.stderr.isatty(),
            verbose=args.verbose,
            log=lambda msg: print(msg, file=sys.stderr),
        )
    except ImportError as exc:  # the [convert] extra (torch) is not installed
        print(
            f"error: conversion needs torch and safetensors ({exc.name or exc} is missing): "
            "pip install 'htsparse-llama[convert]'",
            file=sys.stderr,
        )
        return 1
    # OSError: an output directory that cannot be written (FileExistsError:
    # an existing output); RuntimeError: libllama failed to quantize.
    except (ValueError, OSError, RuntimeError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0
