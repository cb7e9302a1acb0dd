"""What every benchmark result records beside its numbers: the machine, and
the JSON file written atomically."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any, Dict, Optional


def cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> Dict[str, Any]:
    return {"platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count()}


def write_json(path: Optional[str], result: Dict[str, Any]) -> None:
    """The result as indented JSON at `path` (nothing when None), via a temporary file."""
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    print(f"wrote {path}", file=sys.stderr)


def command_line(args: argparse.Namespace) -> str:
    """The bench command that repeats a text run (recorded beside the numbers)."""
    cmd = f"python -m htsparse_llama bench -m {args.model} -t {args.threads} --device {args.device}"
    if args.dense_only:
        return (
            cmd + f" --prefill {','.join(map(str, args.prefill))} --decode-ctx {args.decode_ctx}"
            f" --decode-tokens {args.decode_tokens} --reps {args.reps} --dense-only"
        )
    cmd += (
        f" --context {','.join(map(str, args.context))} --keep-ratio {','.join(map(str, args.keep_ratio))}"
        f" --trials {args.trials} --task {args.task}"
    )
    for flag, value in (
        ("--full-heads", args.full_head_ratio),
        ("--select-layer", args.select_layer),
        ("--prune-layer", args.prune_layer),
    ):
        if value is not None:
            cmd += f" {flag} {value}"
    if args.reroute:
        cmd += " --reroute"
    return cmd
