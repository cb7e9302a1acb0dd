"""`bench --plot FILE.png`: the HT-Sparse curve over keep ratio, one line per
context length: prefill, decode and KV memory relative to llama.cpp dense,
and pass-key accuracy beside the random-lines baseline. Needs matplotlib
(`pip install htsparse-llama[plot]`)."""

from __future__ import annotations

from typing import Dict, List

from ..errors import InvalidArgumentError


def require_matplotlib() -> None:
    """Fails before a long run rather than after it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InvalidArgumentError(
            "--plot needs matplotlib: pip install matplotlib (or htsparse-llama[plot])"
        ) from None


def _by_context(points: List[Dict]) -> Dict[int, List[Dict]]:
    curves: Dict[int, List[Dict]] = {}
    for p in points:
        curves.setdefault(p["context"], []).append(p)
    return {c: sorted(ps, key=lambda p: p["keep_ratio"]) for c, ps in sorted(curves.items())}


def plot_curve(result: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    points = result.get("points") or [
        {
            **result["settings"],
            **{k: result[k] for k in ("llama_cpp", "sparse", "random")},
            "n_tokens": result["settings"]["context"],
        }
    ]
    panels = [
        ("prefill speed vs llama.cpp (x)", lambda p: p["sparse"]["prefill_tok_s"] / p["llama_cpp"]["prefill_tok_s"]),
        ("decode speed vs llama.cpp (x)", lambda p: p["sparse"]["decode_tok_s"] / p["llama_cpp"]["decode_tok_s"]),
        ("KV memory, llama.cpp / ours (x)", lambda p: p["llama_cpp"]["kv_bytes"] / p["sparse"]["kv_bytes"]),
        ("pass-key accuracy", lambda p: p["sparse"]["accuracy"]),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (title, value) in zip(axes.flat, panels):
        for curve in _by_context(points).values():
            x = [p["keep_ratio"] for p in curve]
            (line,) = ax.plot(x, [value(p) for p in curve], marker="o", label=f"{curve[0]['n_tokens']} tokens")
            if title == "pass-key accuracy":
                ax.plot(
                    x,
                    [p["random"]["accuracy"] for p in curve],
                    marker="x",
                    linestyle="--",
                    color=line.get_color(),
                    label=f"random lines, {curve[0]['n_tokens']}",
                )
        ax.set_title(title)
        ax.set_xlabel("keep_ratio")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    s = result["settings"]
    fig.suptitle(
        f"HT-Sparse vs llama.cpp dense: {result.get('model', '')}, select layer {s['select_layer']}, "
        f"prune layer {s['prune_layer']}, {result.get('threads', '?')} threads, {result.get('date', '')}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
