"""The KV cache's growth rule, written again for the tests that check byte
counts (runtime/src/kv_cache.h): a group of a layer is allocated with the
cells it needs padded to 256, and when it needs more it grows to what it
needs or a quarter more, whichever is larger."""

PAD = 256  # KvCache::kCellPad


def padded(n: int) -> int:
    return max(PAD, -(-n // PAD) * PAD)


def capacity(start: int, now: int) -> int:
    """Cells a group holds that was allocated for `start` cells and now holds `now`."""
    return grow(padded(start), now)


def grow(cap: int, needed: int) -> int:
    """A group of `cap` cells after a run that needs `needed` cells."""
    while padded(needed) > cap:
        cap = max(padded(needed), padded(cap + cap // 4))
    return cap
