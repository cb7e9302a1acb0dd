"""Settings declared once (htsparse_llama/options.py): the CLI flags, the
server's request fields and the Python keyword arguments of every HT-Sparse,
sampling and video option come from its one declaration, a bad value gets
the same message on every front end, and the declared ranges agree with what
the runtime (C++) accepts."""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
from dataclasses import asdict, fields

import pytest

from htsparse_llama import Model, Sampling, Session, SparseConfig
from htsparse_llama._native_loader import native
from htsparse_llama.cli import build_parser
from htsparse_llama.errors import InvalidArgumentError
from htsparse_llama.options import Option, OptionError, options_of
from htsparse_llama.server import request as server_request
from htsparse_llama.server.types import ApiError, Limits
from htsparse_llama.sparse_config import SPARSE_SWITCHES
from htsparse_llama.video.turn import VideoOptions

DECLARED = [*options_of(Sampling), *options_of(SparseConfig), *SPARSE_SWITCHES, *options_of(VideoOptions)]


def _flags(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {flag: action.dest for action in sub.choices[command]._actions for flag in action.option_strings}


def _parse(body):
    return server_request.parse_chat_request(
        json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}).encode(), Limits(), ["m"]
    )


def _outside(opt: Option):
    """Values the option must refuse (its bounds, crossed; not a number). Not
    -1: the runtime's (and the C API's) "unset", which takes the default."""
    bad = []
    if opt.lo is not None:
        bad.append(opt.lo if opt.lo_open else opt.lo - (3 if opt.type is int else 0.5))
    if opt.hi is not None:
        bad.append(opt.hi if opt.hi_open else opt.hi + (1 if opt.type is int else 0.5))
    bad = [opt.type(v) for v in bad]
    if opt.type is float:
        bad.append(math.nan)
    return bad


def _inside(opt: Option):
    """Values it must take: its closed bounds and a point between them."""
    good = [v for v, is_open in ((opt.lo, opt.lo_open), (opt.hi, opt.hi_open)) if v is not None and not is_open]
    if opt.lo is not None and opt.hi is not None:
        good.append((opt.lo + opt.hi) / 2)
    return [int(v) if opt.type is int else float(v) for v in good] or [opt.type(3)]


def test_every_front_end_is_made_from_the_declarations():
    chat, serve = _flags("chat"), _flags("serve")
    for opt in DECLARED:
        if opt.cli:
            for flag in opt.cli_flags:
                assert chat.get(flag) == opt.name, (opt.name, flag)  # chat takes every one
    assert serve["--keep-ratio"] == "keep_ratio" and "--reroute" not in serve  # requests are stateless
    request_fields = set(server_request.OPTION_FIELDS)
    for opt in DECLARED:
        assert (opt.request_field in request_fields) == opt.request, opt.name
    # The Python keyword arguments: the dataclass fields, and generate()'s signature.
    generate = [p for p in inspect.signature(Session.generate).parameters if p not in ("self", "stream")]
    assert generate == [f.name for f in fields(Sampling)]


def test_the_runtime_takes_the_fields_the_python_side_declares(smollm_gguf):
    model = Model(smollm_gguf, n_ctx=64, n_threads=2)
    resolved = SparseConfig().resolve(model)
    assert set(asdict(SparseConfig())) <= set(resolved)  # no field is dropped on its way to C++


@pytest.mark.parametrize("opt", [o for o in DECLARED if o.type in (int, float) and _outside(o)], ids=lambda o: o.name)
def test_a_bad_value_is_one_message_everywhere(opt):
    for value in _outside(opt):
        with pytest.raises(OptionError, match=opt.name) as py_error:
            opt.check(value)
        if opt.request:
            with pytest.raises(ApiError) as api_error:
                _parse({opt.request_field: value})
            assert api_error.value.status == 400 and api_error.value.param == opt.request_field
        if opt.cli:
            r = subprocess.run(
                [sys.executable, "-m", "htsparse_llama", "chat", "-m", "x.gguf", opt.cli_flags[-1], str(value)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert r.returncode == 2 and str(py_error.value) in r.stderr and "Traceback" not in r.stderr
        assert isinstance(py_error.value, InvalidArgumentError)


@pytest.mark.parametrize("opt", [o for o in options_of(SparseConfig) if o.type in (int, float)], ids=lambda o: o.name)
def test_sparse_ranges_agree_with_the_runtime(opt, smollm_gguf):
    """What the declaration takes, C++ takes; what it refuses, C++ refuses
    (the model-independent part; the layer fields' upper bounds are the model's)."""
    model = Model(smollm_gguf, n_ctx=64, n_threads=2)
    base = {"select_layer": 0} if opt.name == "prune_layer" else {}

    def runtime_takes(value):
        request = {**base, opt.name: value}
        if opt.name == "select_layer":
            request["prune_layer"] = max(int(value), 0)
        try:
            native.resolve_sparse_config(model._native, request)
            return True
        except InvalidArgumentError:
            return False

    for value in _inside(opt):
        opt.check(value)
        assert runtime_takes(value), (opt.name, value)
    for value in _outside(opt):
        with pytest.raises(OptionError):
            opt.check(value)
        assert not runtime_takes(value), (opt.name, value)


@pytest.mark.parametrize("name", ["temperature", "top_p", "min_p", "repeat_penalty"])
def test_the_sampler_refuses_what_the_declaration_refuses(smollm_gguf, name):
    """NaN and out-of-range sampling values fail in C++ too (the C API's callers have no Python)."""
    opt = next(o for o in options_of(Sampling) if o.name == name)
    model = Model(smollm_gguf, n_ctx=64, n_threads=2)
    s = model.session()
    s.add_text("Hi")
    defaults = {o.name: o.default for o in options_of(Sampling)}
    for value in _outside(opt):
        if name == "temperature" and value < 0:
            continue  # the C API documents a negative temperature as greedy; Python refuses it
        kw = dict(defaults, **{name: value})
        with pytest.raises(InvalidArgumentError, match=name):
            native.Answer(
                s._conv, kw["temperature"], kw["top_k"], kw["top_p"], kw["min_p"], kw["repeat_penalty"], 64, 0, 4, []
            )
