"""libmtmd's image resize for Qwen-VL, written again in Python for the tests
that check a planned frame size is one libmtmd keeps (the runtime never
needs it: planned sizes are fixed points of it)."""

import math

from htsparse_llama.video.plan import QWEN2_VL, VisionGrid


def mtmd_dyn_size(width: int, height: int, grid: VisionGrid = QWEN2_VL):
    """The size libmtmd resizes a width x height image to for a "patches"
    grid (clip's calc_size_preserved_ratio, i.e. transformers' smart_resize
    with libmtmd's min/max pixels). A planned Qwen-VL frame size is a fixed
    point of this, so libmtmd encodes exactly what was planned."""
    f = grid.patch
    min_px, max_px = grid.min_tokens * f * f, grid.max_tokens * f * f
    w_bar = max(f, int(round(width / f)) * f)
    h_bar = max(f, int(round(height / f)) * f)
    if max_px > 0 and w_bar * h_bar > max_px:
        beta = math.sqrt(height * width / max_px)
        h_bar = max(f, math.floor(height / beta / f) * f)
        w_bar = max(f, math.floor(width / beta / f) * f)
    elif min_px > 0 and w_bar * h_bar < min_px:
        beta = math.sqrt(min_px / (height * width))
        h_bar = math.ceil(height * beta / f) * f
        w_bar = math.ceil(width * beta / f) * f
    return w_bar, h_bar
