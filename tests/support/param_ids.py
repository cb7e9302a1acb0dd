"""Readable test ids for parametrized cases whose parameter is a dict of
keyword arguments: `keep_ratio=0.0,select_layer=3` instead of `kw0`."""


def kwargs_id(kwargs) -> str:
    """`k=v` pairs of a dict of keyword arguments (`defaults` when empty)."""
    return ",".join(f"{k}={v!r}" for k, v in kwargs.items()) or "defaults"
