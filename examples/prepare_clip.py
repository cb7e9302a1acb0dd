"""Writes what the C examples and tests read into OUT_DIR: the built-in demo
model (model.gguf, mmproj.gguf: random weights, made on first use by the
Python package) and frames of the packaged clip as binary PPM files with
their list (frames.txt: "duration SECONDS", then one "TIME_S FILE" line per
frame), sampled and sized as `chat --video` samples them for that model.

    python examples/prepare_clip.py OUT_DIR [--video clip.mp4] [--max-visual-tokens 1024]

Needs the Python package (pip install .)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def write_ppm(path: Path, rgb) -> None:
    height, width = rgb.shape[:2]
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % (width, height))
        f.write(rgb.tobytes())


def link(src: Path, dest: Path) -> None:
    """dest becomes src (a symbolic link where the system has them, else a copy)."""
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    try:
        os.symlink(src, dest)
    except OSError:
        import shutil

        shutil.copyfile(src, dest)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--video", default=None, help="a video (default: the clip shipped with the package)")
    p.add_argument("--max-visual-tokens", type=int, default=1024)
    args = p.parse_args()
    try:
        from htsparse_llama import Model, Vision
        from htsparse_llama.fetch.demo_model import default_model_paths
        from htsparse_llama.video import frames as vf
        from htsparse_llama.video.turn import VideoOptions, frame_size, plan_frames
    except ImportError as exc:
        print(f"prepare_clip: the Python package is not installed ({exc}): pip install .", file=sys.stderr)
        return 1
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text, mmproj = default_model_paths(lambda msg: print(msg, file=sys.stderr))
    link(text, out / "model.gguf")
    link(mmproj, out / "mmproj.gguf")

    video = args.video or str(vf.sample_clip_path())
    model = Model(text, n_ctx=256, n_threads=1)
    info, times, plan = plan_frames(
        Vision(model, mmproj, n_threads=1), video, VideoOptions(max_visual_tokens=args.max_visual_tokens)
    )
    size = frame_size(info, plan)
    lines = [f"duration {info.duration_s:.6f}"]
    for i, frame in enumerate(vf.iter_frames(video, times, size=size)):
        name = f"frame_{i:04d}.ppm"
        write_ppm(out / name, frame.rgb)
        lines.append(f"{times[i]:.6f} {name}")
    (out / "frames.txt").write_text("\n".join(lines) + "\n")
    print(f"{out}: {len(times)} frames of {video} at {size[0]}x{size[1]}, the demo model", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
