"""`serve` driven by the official openai client against live local servers:
one with the demo VLM (random weights; images and video, an API key, small
limits) and one with the real SmolLM2-135M (text answers checked against a
Session given the same messages). Bad requests get OpenAI-style 4xx errors
and the server keeps serving; a bounded concurrent load gets the right
answers; Ctrl-C stops the server cleanly, also in the middle of an answer.
Parsing details are unit-tested without a server at the end."""

import base64
import http.client
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from htsparse_llama.video.frames import sample_clip_path

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.real_model  # SmolLM2, and the demo model's tokenizer from the packaged Qwen GGUF

CLIP = str(sample_clip_path())
KEY = "test-key-123"
DEMO_ID = "default-vlm-F16"
SMALL_VIDEO = dict(max_frames=8, max_visual_tokens=512)


class LiveServer:
    """`python -m htsparse_llama serve ...` on a free port (--port 0), ready
    once it prints its listening line. ignore_sigint: started as a script's
    `cmd &` job is, with SIGINT ignored (which a Python process keeps)."""

    def __init__(self, args, tmp_path, api_key=None, ignore_sigint=False):
        self.stderr_path = tmp_path / "server.err"
        self._err = open(self.stderr_path, "w")
        shell = ["/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh"] if ignore_sigint else []
        self.proc = subprocess.Popen(
            [*shell, sys.executable, "-m", "htsparse_llama", "serve", "--port", "0", "-t", "2", *args],
            stdout=subprocess.PIPE,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(os.environ, HTSPARSE_API_KEY=api_key or ""),
        )
        self.api_key = api_key
        line = self._first_line(timeout=600)
        match = re.search(r"at (http://[^/\s]+/v1)", line)
        assert match, f"no listening line: {line!r}; stderr: {self.stderr()}"
        self.base_url = match.group(1)
        self.host, port = self.base_url[len("http://") : -len("/v1")].rsplit(":", 1)
        self.port = int(port)

    def _first_line(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else ""

    def stderr(self):
        return self.stderr_path.read_text()

    def client(self, api_key=None, **kwargs):
        return openai.OpenAI(
            base_url=self.base_url, api_key=api_key or self.api_key or "none", max_retries=0, timeout=300, **kwargs
        )

    def raw(self, method, path, body=None, headers=None):
        """(status, parsed JSON body, response headers) of one plain HTTP request."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        try:
            hdrs = dict(headers or {})
            if self.api_key and "Authorization" not in hdrs:
                hdrs["Authorization"] = f"Bearer {self.api_key}"
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data else None, dict(resp.getheaders())
        finally:
            conn.close()

    def stop(self, sig=signal.SIGINT):
        """Ctrl-C (or `sig`): the server says so and exits 0. Returns the seconds it took."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._err.close()
            self.proc.stdout.close()
        took = time.monotonic() - started
        assert code == 0, self.stderr()
        assert "stopped" in self.stderr()
        return took


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    shutil.copy(CLIP, folder / "clip.mp4")
    (folder / "picture.png").write_bytes(_png())
    return folder


@pytest.fixture(scope="module")
def vlm(demo_model, media_dir, tmp_path_factory):
    """The demo VLM (no -m), an API key from the environment, small limits."""
    server = LiveServer(
        [
            "--media-dir",
            str(media_dir),
            "--max-body-mb",
            "2",
            "--max-media-mb",
            "1",
            "--max-visual-tokens",
            "1024",
            "-n",
            "6",
            "--temp",
            "0",
        ],
        tmp_path_factory.mktemp("vlm"),
        api_key=KEY,
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def text(smollm_gguf, tmp_path_factory):
    server = LiveServer(["-m", smollm_gguf, "--alias", "smollm", "-n", "16"], tmp_path_factory.mktemp("text"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def smollm(smollm_gguf):
    from htsparse_llama import Model

    return Model(smollm_gguf, n_ctx=4096, n_threads=2)


def _png(width=224, height=168):
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    buf = io.BytesIO()
    Image.fromarray(np.stack([x, y, (x + y) % 256], -1).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _data_url(mime, data):
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _video_message(url, question="What happens?"):
    return [
        {
            "role": "user",
            "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}],
        }
    ]


def _expected(model, messages, max_tokens=16):
    """What a Session given the same messages answers, greedily."""
    s = model.session()
    for m in messages:
        s.add_message(m["role"], m["content"])
    return s.generate(max_tokens=max_tokens, temperature=0, stream=False), s


# -- the basics -------------------------------------------------------------------------------------


def test_health_models_and_the_demo_note(vlm):
    status, body, _ = vlm.raw("GET", "/health", headers={"Authorization": ""})  # no key needed
    assert status == 200 and body == {"status": "ok"}
    client = vlm.client()
    assert [m.id for m in client.models.list().data] == [DEMO_ID]
    assert client.models.retrieve(DEMO_ID).id == DEMO_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert "random" in vlm.stderr() and "meaningless" in vlm.stderr()  # says honestly what it serves


def test_api_key_required(vlm):
    with pytest.raises(openai.AuthenticationError) as info:
        vlm.client(api_key="wrong").models.list()
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    status, body, headers = vlm.raw("POST", "/v1/chat/completions", body=b"{}", headers={"Authorization": ""})
    assert status == 401 and body["error"]["type"] == "invalid_request_error" and headers["WWW-Authenticate"]
    r = vlm.client().chat.completions.create(model=DEMO_ID, messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].finish_reason in ("stop", "length")


def test_text_answer_equals_a_session(text, smollm):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name three colours."},
    ]
    r = text.client().chat.completions.create(model="smollm", messages=messages, temperature=0, max_tokens=16)
    answer, session = _expected(smollm, messages)
    assert r.choices[0].message.content == answer and answer.strip()
    assert r.choices[0].message.role == "assistant" and r.model == "smollm" and r.object == "chat.completion"
    assert r.choices[0].finish_reason == ("length" if session.finish_reason == "length" else "stop")
    assert r.usage.prompt_tokens == session.stats().n_prompt
    if session.finish_reason == "length":
        assert r.usage.completion_tokens == 16
    else:
        assert 0 < r.usage.completion_tokens < 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model_extra["htsparse"]["sparse"] is False  # text alone runs the dense path


def test_streamed_answer_equals_the_whole_one(text):
    client = text.client()
    messages = [{"role": "user", "content": "Write a short sentence about the sea."}]
    whole = client.chat.completions.create(model="smollm", messages=messages, temperature=0, max_tokens=12)
    chunks = list(
        client.chat.completions.create(
            model="smollm",
            messages=messages,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1  # it came in pieces
    assert "".join(deltas) == whole.choices[0].message.content
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == whole.choices[0].finish_reason
    assert finishing[0].model_extra["htsparse"]["n_prompt"] == whole.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # include_usage: the last chunk
    assert len({c.id for c in chunks}) == 1
    # A stop string cuts the answer before it.
    words = whole.choices[0].message.content.split()
    stop = words[min(2, len(words) - 1)]
    cut = client.chat.completions.create(model="smollm", messages=messages, temperature=0, max_tokens=12, stop=[stop])
    full = whole.choices[0].message.content
    assert cut.choices[0].message.content == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"


# -- images and video -------------------------------------------------------------------------------


def test_image_part(vlm):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": _data_url("image/png", _png())}},
            ],
        }
    ]
    r = vlm.client().chat.completions.create(model=DEMO_ID, messages=messages)
    h = r.model_extra["htsparse"]
    assert h["visual_tokens"] == 48  # 224x168 px: 8x6 merged patches
    assert h["sparse"] and h["n_sparse"] >= 48 and 0 < h["n_kept"] <= h["n_sparse"]
    assert r.usage.prompt_tokens > 48


def test_video_data_url_and_keep_ratio(vlm):
    client = vlm.client()
    messages = _video_message(_data_url("video/mp4", open(CLIP, "rb").read()))
    few = client.chat.completions.create(
        model=DEMO_ID, messages=messages, extra_body=dict(SMALL_VIDEO, keep_ratio=0.25)
    )
    h = few.model_extra["htsparse"]
    assert h["frames"] == 8 and 0 < h["visual_tokens"] <= 512 and h["n_sparse"] >= h["visual_tokens"]
    assert 0 < h["n_kept"] < h["n_sparse"] / 2 and h["kv_bytes"] < h["kv_bytes_tokens"] <= h["kv_bytes_dense"]
    assert few.usage.prompt_tokens > h["visual_tokens"]
    every = client.chat.completions.create(
        model=DEMO_ID, messages=messages, extra_body=dict(SMALL_VIDEO, keep_ratio=1.0, full_head_ratio=1.0)
    )
    e = every.model_extra["htsparse"]
    assert e["from_cache"]  # the same video again: not encoded again
    assert e["n_kept"] == e["n_sparse"] > h["n_kept"]  # the per-request keep_ratio decides
    dense = client.chat.completions.create(model=DEMO_ID, messages=messages, extra_body=dict(SMALL_VIDEO, dense=True))
    d = dense.model_extra["htsparse"]
    assert not d["sparse"] and d["n_sparse"] == 0 and d["kv_bytes_tokens"] <= d["kv_bytes"] <= d["kv_bytes_dense"]
    assert h["kv_bytes_peak"] < d["kv_bytes_peak"]
    assert d["visual_tokens"] == h["visual_tokens"]
    # Keeping everything is the dense answer (docs/architecture.md#testing: sparse = dense at keep 1, full heads 1).
    assert every.choices[0].message.content == dense.choices[0].message.content


def test_streamed_video_answer(vlm):
    client = vlm.client()
    messages = _video_message(_data_url("video/mp4", open(CLIP, "rb").read()), "And then?")
    whole = client.chat.completions.create(model=DEMO_ID, messages=messages, extra_body=SMALL_VIDEO)
    chunks = list(client.chat.completions.create(model=DEMO_ID, messages=messages, extra_body=SMALL_VIDEO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].model_extra["htsparse"]["n_kept"] == whole.model_extra["htsparse"]["n_kept"]


def test_file_paths_under_media_dir_are_read(vlm, media_dir):
    client = vlm.client()
    for url in (str(media_dir / "clip.mp4"), (media_dir / "clip.mp4").as_uri()):
        r = client.chat.completions.create(model=DEMO_ID, messages=_video_message(url), extra_body=SMALL_VIDEO)
        assert r.model_extra["htsparse"]["frames"] == 8
    picture = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": str(media_dir / "picture.png")}},
                {"type": "text", "text": "?"},
            ],
        }
    ]
    r = client.chat.completions.create(model=DEMO_ID, messages=picture)
    assert r.model_extra["htsparse"]["visual_tokens"] == 48


# (media_dir, a copy of the clip outside it, a link inside it to that copy) -> the URL asked for.
OUTSIDE_MEDIA_DIR = [
    pytest.param(lambda media_dir, outside, link: str(outside), id="path"),
    pytest.param(lambda media_dir, outside, link: outside.as_uri(), id="file-uri"),
    pytest.param(lambda media_dir, outside, link: str(link), id="link-inside-to-outside"),  # inside by name only
    pytest.param(lambda media_dir, outside, link: str(media_dir / ".." / outside.name), id="dot-dot"),
]


@pytest.mark.parametrize("url_of", OUTSIDE_MEDIA_DIR)
def test_file_paths_outside_media_dir_are_refused(vlm, media_dir, tmp_path, url_of):
    outside = tmp_path / "clip.mp4"
    shutil.copy(CLIP, outside)
    link = media_dir / "link.mp4"
    link.symlink_to(outside)  # inside by name, outside in fact
    try:
        with pytest.raises(openai.PermissionDeniedError) as info:
            vlm.client().chat.completions.create(
                model=DEMO_ID, messages=_video_message(url_of(media_dir, outside, link))
            )
        assert info.value.status_code == 403 and "outside" in info.value.message
        assert info.value.body["param"] == "messages[0].content[0]"
    finally:
        link.unlink()


# -- bad requests -----------------------------------------------------------------------------------


def _error(server, status, code, **kwargs):
    """The client's error for a request that must fail with `status`/`code`."""
    with pytest.raises(openai.APIStatusError) as info:
        server.client().chat.completions.create(**kwargs)
    err = info.value
    assert err.status_code == status, err.message
    assert set(err.body) >= {"message", "type", "code"} and err.body["code"] == code, err.body
    return err


# The refusals below run one by one against the one live `vlm` server; the
# last test of the section checks that it still serves after them all.

HI = [{"role": "user", "content": "Hi"}]

# Malformed JSON, a body that is no object, missing fields: plain HTTP.
BAD_BODIES = [
    pytest.param(b'{"model": "x", messages', "invalid_json", id="malformed-json"),
    pytest.param(b"[1, 2]", "invalid_json", id="not-an-object"),
    pytest.param(json.dumps({"model": DEMO_ID}).encode(), "missing_required_parameter", id="no-messages"),
    pytest.param(json.dumps({"messages": HI}).encode(), "missing_required_parameter", id="no-model"),
]


@pytest.mark.parametrize("body, code", BAD_BODIES)
def test_bad_body_is_refused(vlm, body, code):
    status, out, _ = vlm.raw("POST", "/v1/chat/completions", body=body)
    assert status == 400 and out["error"]["code"] == code and out["error"]["message"], out


def test_body_over_the_limit_is_refused_unread(vlm):
    """A body far larger than the limit is refused unread, and the connection closed."""
    conn = http.client.HTTPConnection(vlm.host, vlm.port, timeout=60)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Length", str(10**9))
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and resp.getheader("Connection") == "close"
    assert json.loads(resp.read())["error"]["code"] == "request_too_large"
    conn.close()


def _clip_message():
    return _video_message(_data_url("video/mp4", open(CLIP, "rb").read()))


def _message_has(*fragments):
    def check(err):
        for fragment in fragments:
            assert fragment in err.message, err.message

    return check


def _keep_ratio_param(err):
    assert err.body["param"] == "keep_ratio", err.body


def _junk_video_named(err):
    assert "data URL" in err.message and "htsparse-serve" not in err.message  # names the part, not a temp file


def _refusal(case_id, request, status, code, check=None):
    """request: () -> the keyword arguments of chat.completions.create
    (made when the test runs: some are megabytes); check(err): more to assert."""
    return pytest.param(request, status, code, check, id=case_id)


# Through the client: (request, status, code, extra check).
BAD_REQUESTS = [
    _refusal(
        "unknown-model",
        lambda: dict(model="gpt-4o", messages=HI),
        404,
        "model_not_found",
        _message_has("gpt-4o", DEMO_ID),
    ),
    _refusal(
        "body-over-max-body-mb",  # > --max-body-mb 2
        lambda: dict(
            model=DEMO_ID,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": _data_url("image/png", os.urandom(2 << 20))}}
                    ],
                }
            ],
        ),
        413,
        "request_too_large",
    ),
    _refusal(
        "media-over-max-media-mb",  # < 2 MiB of body, > --max-media-mb 1
        lambda: dict(model=DEMO_ID, messages=_video_message(_data_url("video/mp4", os.urandom(1200 << 10)))),
        413,
        "media_too_large",
        _message_has("MiB"),
    ),
    _refusal(
        "http-url",
        lambda: dict(model=DEMO_ID, messages=_video_message("https://example.com/a.mp4")),
        400,
        "url_not_allowed",
        _message_has("data URL"),
    ),
    _refusal(
        "not-a-video",
        lambda: dict(model=DEMO_ID, messages=_video_message(_data_url("video/mp4", b"not a video"))),
        400,
        "invalid_media",
        _junk_video_named,
    ),
    *[
        _refusal(
            f"keep_ratio={value!r}",
            lambda value=value: dict(model=DEMO_ID, messages=HI, extra_body={"keep_ratio": value}),
            400,
            "invalid_value",
            _keep_ratio_param,
        )
        for value in (1.5, 0, "half", True)
    ],
    _refusal(
        "select_layer=99",
        lambda: dict(model=DEMO_ID, messages=HI, extra_body={"select_layer": 99}),
        400,
        "invalid_value",
        _message_has("select_layer"),
    ),
    _refusal(
        "max_visual_tokens=5000",
        lambda: dict(model=DEMO_ID, messages=HI, extra_body={"max_visual_tokens": 5000}),
        400,
        "invalid_value",
    ),
    _refusal(
        "unknown-parameter",
        lambda: dict(model=DEMO_ID, messages=HI, extra_body={"keep_ration": 0.5}),
        400,
        "unknown_parameter",
        _message_has("keep_ration"),
    ),
    _refusal("n=2", lambda: dict(model=DEMO_ID, messages=HI, n=2), 400, "unsupported_parameter"),
    _refusal("no-messages", lambda: dict(model=DEMO_ID, messages=[]), 400, "invalid_value"),
    _refusal("max_tokens=0", lambda: dict(model=DEMO_ID, messages=HI, max_tokens=0), 400, "invalid_value"),
    # A budget too small for one frame pair.
    _refusal(
        "budget-below-one-frame-pair",
        lambda: dict(model=DEMO_ID, messages=_clip_message(), extra_body={"max_visual_tokens": 10}),
        400,
        "invalid_media",
    ),
]


@pytest.mark.parametrize("request_kwargs, status, code, check", BAD_REQUESTS)
def test_bad_request_is_refused(vlm, request_kwargs, status, code, check):
    err = _error(vlm, status, code, **request_kwargs())
    if check is not None:
        check(err)


@pytest.mark.parametrize(
    "path, status, code",
    [
        pytest.param("/v1/nothing", 404, "not_found", id="unknown-path"),
        pytest.param("/v1/chat/completions", 405, None, id="get-on-chat-completions"),
    ],
)
def test_bad_http_get_is_refused(vlm, path, status, code):
    got, out, _ = vlm.raw("GET", path)
    assert got == status
    if code is not None:
        assert out["error"]["code"] == code


def test_the_server_still_serves_after_bad_requests(vlm):
    """After the refusals above (this test comes after them in the module,
    and refuses one more itself) the server answers a good request."""
    status, _, _ = vlm.raw("POST", "/v1/chat/completions", body=b'{"model": "x", messages')
    assert status == 400
    r = vlm.client().chat.completions.create(model=DEMO_ID, messages=HI)
    assert r.choices[0].message.content is not None and r.usage.completion_tokens > 0
    assert vlm.proc.poll() is None


def test_text_server_refuses_media(text):
    with pytest.raises(openai.BadRequestError) as info:
        text.client().chat.completions.create(model="smollm", messages=_video_message(_data_url("video/mp4", b"x")))
    assert "--mmproj" in info.value.message


# -- load -------------------------------------------------------------------------------------------


def test_concurrent_load(text, smollm):
    prompts = ["Say hello.", "Count to five.", "Name a fruit.", "What is two plus two?"]
    expected = {p: _expected(smollm, [{"role": "user", "content": p}], max_tokens=8)[0] for p in prompts}
    client = text.client()

    def ask(i):
        prompt = prompts[i % len(prompts)]
        messages = [{"role": "user", "content": prompt}]
        if i % 2:  # half of them streamed
            stream = client.chat.completions.create(
                model="smollm", messages=messages, temperature=0, max_tokens=8, stream=True
            )
            return prompt, "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        r = client.chat.completions.create(model="smollm", messages=messages, temperature=0, max_tokens=8)
        return prompt, r.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:  # 4 clients x 2 requests
        results = list(pool.map(ask, range(8)))
    assert len(results) == 8
    for prompt, answer in results:
        assert answer == expected[prompt], prompt


def test_a_client_that_leaves_frees_the_model(vlm):
    """A stream dropped after two chunks stops decoding: the next request
    does not wait for the 3000 tokens asked for (tens of seconds here)."""
    client = vlm.client()
    hi = [{"role": "user", "content": "Hi"}]
    stream = client.chat.completions.create(model=DEMO_ID, messages=hi, max_tokens=3000, stream=True)
    next(iter(stream)), next(iter(stream))
    stream.close()
    started = time.monotonic()
    r = client.chat.completions.create(model=DEMO_ID, messages=hi, max_tokens=4)
    assert r.usage.completion_tokens > 0 and time.monotonic() - started < 10


# -- stopping ---------------------------------------------------------------------------------------


def _send_chat(server, stream, max_tokens):
    """A chat request to the demo VLM on a connection of its own (the response is read by the caller)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    body = json.dumps({"model": DEMO_ID, "messages": HI, "max_tokens": max_tokens, "stream": stream})
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    return conn


@pytest.mark.parametrize(
    "stream, sig",
    [pytest.param(True, signal.SIGINT, id="streamed-ctrl-c"), pytest.param(False, signal.SIGTERM, id="whole-sigterm")],
)
def test_stop_in_the_middle_of_an_answer(demo_model, tmp_path, stream, sig):
    """Ctrl-C or SIGTERM while the demo VLM decodes an answer of 8000 tokens
    (a minute on two cores), a second request waits for the model and a
    keep-alive connection sits idle: the answer ends between two tokens with
    a 503, the waiting request gets one too, the idle connection is closed,
    and the server exits 0 within seconds, not after its 10 s grace. It runs
    with SIGINT ignored from its parent, as under a script's `pytest &`,
    where Ctrl-C once did nothing and the teardown waited 60 s per server."""
    server = LiveServer(["--ctx", "8192"], tmp_path, ignore_sigint=True)
    try:
        idle = http.client.HTTPConnection(server.host, server.port, timeout=60)
        idle.request("GET", "/health")
        assert idle.getresponse().read()  # the connection stays open (keep-alive)
        answering = _send_chat(server, stream, max_tokens=8000)
        if stream:
            answer = answering.getresponse()
            assert answer.status == 200
            for _ in range(3):  # the role, then two pieces: decoding
                assert answer.fp.readline().startswith(b"data: ") and answer.fp.readline() == b"\n"
        else:
            time.sleep(1.0)  # past the prefill (a few tokens), decoding
        waiting = _send_chat(server, False, max_tokens=4)
        time.sleep(0.5)  # in line for the model
        took = server.stop(sig)
        assert took < 8, f"stopping took {took:.1f} s"
        assert "not waiting" not in server.stderr()  # nothing was left in the runtime
        if stream:
            events = [line for line in answer.read().split(b"\n") if line.startswith(b"data: ")]
            error = json.loads(events[-1][len(b"data: ") :])["error"]
        else:
            answer = answering.getresponse()
            assert answer.status == 503
            error = json.loads(answer.read())["error"]
        assert error["code"] == "server_stopping" and "cut short" in error["message"], error
        refused = waiting.getresponse()
        assert refused.status == 503
        error = json.loads(refused.read())["error"]
        assert error["code"] == "server_stopping" and "not run" in error["message"], error
        try:
            assert idle.sock.recv(1) == b""  # closed by the server
        except ConnectionResetError:
            pass
        for conn in (idle, answering, waiting):
            conn.close()
    finally:
        if server.proc.poll() is None:  # failed before it was stopped
            server.proc.kill()


def test_help_and_bad_flags(tmp_path):
    cli = [sys.executable, "-m", "htsparse_llama"]
    top = subprocess.run([*cli, "--help"], capture_output=True, text=True, timeout=120)
    assert "serve" in top.stdout
    out = subprocess.run([*cli, "serve", "--help"], capture_output=True, text=True, timeout=120).stdout
    for flag in (
        "--mmproj",
        "--host",
        "--port",
        "--api-key",
        "--media-dir",
        "--max-body-mb",
        "--keep-ratio",
        "--alias",
    ):
        assert flag in out
    # Refused before any model loads: one line, no traceback.
    r = subprocess.run(
        [*cli, "serve", "--media-dir", str(tmp_path / "missing")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 1 and "--media-dir" in r.stderr and "Traceback" not in r.stderr


# -- parsing and the queue, without a server ---------------------------------------------------------


def _parse(body, **limits):
    from htsparse_llama.server.request import parse_chat_request
    from htsparse_llama.server.types import Limits

    return parse_chat_request(json.dumps(body).encode(), Limits(**limits), ["m"])


@pytest.mark.parametrize(
    "messages, fragment",
    [
        pytest.param([{"role": "assistant", "content": "Hi"}], "last message", id="last-message-not-user"),
        pytest.param([{"role": "robot", "content": "Hi"}], "role", id="unknown-role"),
        pytest.param([{"role": "user", "content": 7}], "string or a non-empty list", id="content-a-number"),
        pytest.param([{"role": "user", "content": [{"type": "audio", "audio": {}}]}], '"audio"', id="audio-part"),
        pytest.param(
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]}],
            "base64",
            id="bad-base64",
        ),
        pytest.param(
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}],
                },
                {"role": "assistant", "content": "ok"},
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}],
                },
            ],
            "one user message",
            id="media-in-two-user-messages",
        ),
        pytest.param(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,QUJD"}},
                        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,QUJD"}},
                    ],
                }
            ],
            "one video",
            id="two-videos",
        ),
        pytest.param(
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://host/a.png"}}]}],
            "scheme",
            id="ftp-url",
        ),
        pytest.param(
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "relative.png"}}]}],
            "absolute",
            id="relative-path",
        ),
    ],
)
def test_bad_messages(messages, fragment, tmp_path):
    from htsparse_llama.server.types import ApiError

    with pytest.raises(ApiError) as info:
        _parse({"model": "m", "messages": messages}, media_dirs=[str(tmp_path)])
    assert info.value.status == 400 and fragment in info.value.message, info.value.message


def test_parsed_request():
    req = _parse(
        {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 9,
            "max_completion_tokens": 5,
            "stop": "END",
            "seed": 3,
            "top_k": 1,
            "keep_ratio": 0.5,
            "fps": 1,
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look:"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
                        {"type": "text", "text": "what is it?"},
                    ],
                },
            ],
        }
    )
    try:
        assert req.stream and req.include_usage and req.visual_index == 1
        assert req.sampling == {"max_tokens": 5, "stop": ["END"], "seed": 3, "top_k": 1}
        assert req.sparse == {"keep_ratio": 0.5} and req.video == {"fps": 1}
        assert [m.role for m in req.messages] == ["system", "user"]
        assert req.messages[1].text == "Look:\nwhat is it?"
        media = req.messages[1].media[0]
        assert media.kind == "image" and open(media.path, "rb").read() == b"ABC"
        workdir = req.workdir
    finally:
        req.close()
    assert not os.path.exists(workdir)  # decoded data URLs are removed


def test_queue_bounds_waiting_requests():
    from htsparse_llama.server.engine import RequestQueue
    from htsparse_llama.server.types import ApiError

    queue = RequestQueue(max_waiting=1, timeout=0.5)
    inside, release = threading.Event(), threading.Event()

    def hold():
        with queue.slot():
            inside.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(10)
    waiter_error = []

    def wait():
        try:
            with queue.slot():
                pass
        except ApiError as exc:
            waiter_error.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    deadline = time.monotonic() + 0.4
    while queue.n_in < 2 and time.monotonic() < deadline:  # the waiter is in line
        time.sleep(0.005)
    with pytest.raises(ApiError) as info:  # one runs, one waits: a third is refused at once
        with queue.slot():
            pass
    assert info.value.status == 503 and info.value.code == "server_busy"
    waiter.join(10)
    assert waiter_error and waiter_error[0].code == "queue_timeout"  # waited past the timeout
    release.set()
    holder.join(10)
    with queue.slot():  # free again
        pass
