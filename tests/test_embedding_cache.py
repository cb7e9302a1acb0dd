"""The visual-embedding cache: content-hash keys, memory and disk hits,
eviction, and damaged entries read as misses."""

import shutil

import numpy as np

from htsparse_llama.video.cache import EmbeddingCache


def items(seed=0, n=3):
    rng = np.random.default_rng(seed)
    return [
        {
            "embd": rng.normal(size=(4, 8)).astype(np.float32),
            "pos": np.arange(12, dtype=np.int32).reshape(3, 4),
            "time": np.array(0.5 * i),
        }
        for i in range(n)
    ]


def same(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def test_key_follows_content_settings_and_mmproj(tmp_path):
    video, copy, other = tmp_path / "a.mp4", tmp_path / "renamed.mp4", tmp_path / "b.mp4"
    video.write_bytes(b"frames" * 1000)
    shutil.copy(video, copy)
    other.write_bytes(b"frames" * 999 + b"FRAMES")
    mm = tmp_path / "mmproj.gguf"
    mm.write_bytes(b"weights")
    c = EmbeddingCache()
    k = c.key(video, {"fps": 2, "max_frames": 8}, mm)
    assert c.key(copy, {"max_frames": 8, "fps": 2}, mm) == k  # same bytes, key order irrelevant
    assert c.key(other, {"fps": 2, "max_frames": 8}, mm) != k
    assert c.key(video, {"fps": 1, "max_frames": 8}, mm) != k
    assert c.key(video, {"fps": 2, "max_frames": 8}) != k


def test_memory_and_disk_hits(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x" * 5000)
    first = EmbeddingCache(tmp_path / "cache")
    k = first.key(video, {"fps": 2})
    assert first.get(k) is None and first.misses == 1
    first.put(k, items())
    assert same(first.get(k), items()) and first.hits == 1
    # A second run (new process, same directory) finds it on disk.
    second = EmbeddingCache(tmp_path / "cache")
    assert same(second.get(second.key(video, {"fps": 2})), items())
    assert not list((tmp_path / "cache").rglob("*.tmp*"))  # no temporary files left


def test_memory_is_bounded(tmp_path):
    c = EmbeddingCache(max_memory_bytes=2 * sum(a.nbytes for i in items() for a in i.values()))
    for i in range(4):
        c.put(f"k{i}", items(seed=i))
    assert c.get("k0") is None and c.get("k1") is None and same(c.get("k3"), items(seed=3))


def test_damaged_entry_is_a_miss_and_is_rewritten(tmp_path):
    c = EmbeddingCache(tmp_path)
    c.put("ab12", items())
    path = next(tmp_path.rglob("ab12.npz"))
    path.write_bytes(path.read_bytes()[:100])  # cut, as by a full disk
    fresh = EmbeddingCache(tmp_path)
    assert fresh.get("ab12") is None
    fresh.put("ab12", items(seed=1))
    assert same(EmbeddingCache(tmp_path).get("ab12"), items(seed=1))
