"""The KV cache's growth rule, written again for the tests that check byte
counts (runtime/src/kv_cache.h): a group of a layer is allocated with the
cells it needs padded to 256, and when it needs more it grows to what it
needs, or, when one padding step more would do (decoding), a quarter more
if that is larger."""

PAD = 256  # KvCache::kCellPad


def padded(n: int) -> int:
    return max(PAD, -(-n // PAD) * PAD)


def capacity(start: int, now: int) -> int:
    """Cells a group holds that was allocated for `start` cells and now holds `now`."""
    return grow(padded(start), now)


def grow(cap: int, needed: int) -> int:
    """A group of `cap` cells after a run that needs `needed` cells."""
    n = padded(needed)
    if n <= cap:
        return cap
    if n <= padded(cap + 1):  # decoding: the next padding step, so a quarter more
        return max(n, padded(cap + cap // 4))
    return n
