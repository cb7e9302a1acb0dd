"""Frame ingestion and planning (htsparse_llama.video.frames, .plan) on real clips: the clip shipped
in the package always, and ../shared/data/videos when that folder exists."""

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from htsparse_llama._native_loader import native  # noqa: E402
from htsparse_llama.errors import InvalidArgumentError, VideoError  # noqa: E402
from htsparse_llama.video.frames import DecodeStats, VideoInfo, iter_frames, probe, read_image, sample_clip_path  # noqa: E402
from htsparse_llama.video.plan import (  # noqa: E402
    QWEN2_VL,
    SMOLVLM2_VIDEO,
    plan_budget,
    plan_video,
    sample_times,
    smolvlm_mtmd_grid,
)
from support.mtmd_reference import mtmd_dyn_size  # noqa: E402
from support.param_ids import kwargs_id  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
NO_SHARED = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} absent")

# name -> (path getter, width, height, duration s, fps, frames, has audio)
CLIPS = {
    "clip": (lambda: sample_clip_path(), 720, 358, 10.024, 23.88, 240, True),
    "bikes": (lambda: SHARED / "bikes.mp4", 640, 272, 10.0, 25.0, 250, False),
    "bigbuckbunny": (lambda: SHARED / "bigbuckbunny.mp4", 1280, 720, 5.28, 25.0, 132, True),
    "llamacpp-test-3": (lambda: SHARED / "llamacpp-test-3.mp4", 720, 358, 10.024, 23.88, 240, True),
}
ALL = [pytest.param(n, marks=() if n == "clip" else NO_SHARED) for n in CLIPS]


def clip_path(name):
    return str(CLIPS[name][0]())


def decode_all(path):
    """Every frame of the file as (time from stream start, rgb), plain PyAV."""
    with av.open(path) as c:
        s = c.streams.video[0]
        t0 = s.start_time or 0
        return [(float((f.pts - t0) * s.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(s)]


def info_of(duration, width=640, height=360):
    return VideoInfo(
        path="x.mp4",
        duration_s=duration,
        fps=25.0,
        n_frames=None,
        width=width,
        height=height,
        codec="h264",
        has_audio=False,
        container="mp4",
    )


# ------------------------------------------------------------------ probe


@pytest.mark.parametrize("name", ALL)
def test_probe_reads_metadata(name):
    _, w, h, dur, fps, n, audio = CLIPS[name]
    info = probe(clip_path(name))
    assert (info.width, info.height) == (w, h)
    assert info.duration_s == pytest.approx(dur, abs=0.01)
    assert info.fps == pytest.approx(fps, abs=0.01)
    assert info.n_frames == n
    assert info.codec == "h264" and info.has_audio is audio


def test_shipped_clip_is_llamacpp_test_clip():
    path = sample_clip_path()
    assert path.is_file() and path.stat().st_size == 661813
    assert (path.parent / "README.md").read_text().count("MIT") >= 1


# --------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "kw, expected",
    [
        pytest.param(kw, expected, id=kwargs_id(kw))
        for kw, expected in [
            (dict(fps=1), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            (dict(), [k / 2 for k in range(20)]),  # default 2 fps
            (dict(fps=2, max_frames=4), [0, 2.5, 5, 7.5]),
            (dict(fps=1, start=2, end=5), [2, 3, 4]),
            (dict(fps=0.3), [0, 3.333333, 6.666667]),  # 10*0.3 is 3.0000000000000004
            (dict(fps=1, start=8, end=100), [8, 9]),  # end clamped to the duration
            (dict(fps=10, max_frames=3, start=1, end=4), [1, 2, 3]),
            (dict(fps=4, start=9.9), [9.9]),
            (dict(max_frames=1), [0]),
        ]
    ],
)
def test_sample_times_rule(kw, expected):
    assert sample_times(info_of(10.0), **kw) == pytest.approx(expected, abs=1e-9)


def test_sample_times_on_real_durations():
    clip = probe(clip_path("clip"))  # 10.024 s: 1 fps gives 11 frames
    assert sample_times(clip, fps=1) == [float(k) for k in range(11)]
    assert len(sample_times(clip)) == 21 and sample_times(clip)[-1] == 10.0
    short = info_of(5.28)  # bigbuckbunny's duration
    assert sample_times(short, fps=1) == [0, 1, 2, 3, 4, 5]
    assert sample_times(short, max_frames=3) == pytest.approx([0, 1.76, 3.52])


@pytest.mark.parametrize(
    "kw, words",
    [
        pytest.param(kw, words, id=kwargs_id(kw))
        for kw, words in [
            (dict(fps=0), "fps must be > 0"),
            (dict(fps=-2), "fps must be > 0"),
            (dict(fps=float("nan")), "finite"),
            (dict(fps="2"), "must be a number"),
            (dict(max_frames=0), "max_frames must be an integer >= 1"),
            (dict(max_frames=2.5), "max_frames must be an integer >= 1"),
            (dict(start=-1), "start must be >= 0"),
            (dict(start=10.0), "at or beyond the end of the video"),
            (dict(start=42), "at or beyond the end of the video"),
            (dict(start=5, end=5), "must be after start"),
            (dict(start=6, end=2), "must be after start"),
        ]
    ],
)
def test_sample_times_rejects_bad_arguments(kw, words):
    with pytest.raises(VideoError, match=words) as e:
        sample_times(info_of(10.0), **kw)
    assert isinstance(e.value, InvalidArgumentError)
    assert str(e.value).count("\n") == 0


# --------------------------------------------------------- nearest frames


@pytest.mark.parametrize("name", ALL)
def test_iter_frames_takes_the_frame_shown_at_each_time(name):
    path = clip_path(name)
    every = decode_all(path)
    frame_times = np.array([t for t, _ in every])
    info = probe(path)
    # a dense stretch (3 fps), a stretch above the native rate (repeats),
    # and a jump far ahead (a seek)
    times = (
        sample_times(info, fps=3, start=0.9, end=2.6)
        + sample_times(info, fps=60, start=3.0, end=3.1)
        + [info.duration_s - 0.6, info.duration_s - 0.01]
    )
    stats = DecodeStats()
    frames = list(iter_frames(path, times, stats=stats))
    assert [f.index for f in frames] == list(range(len(times)))
    for f, t in zip(frames, times):
        j = int(np.searchsorted(frame_times, t + 1e-6, side="right")) - 1
        assert f.requested_s == t
        assert f.time_s == pytest.approx(frame_times[j], abs=1e-9), t
        assert f.time_s <= t + 1e-6
        assert f.rgb.dtype == np.uint8 and f.rgb.shape == every[j][1].shape
        assert np.array_equal(f.rgb, every[j][1]), f"pixels differ at {t} s"
    assert len({f.time_s for f in frames[6:12]}) < 6  # 60 fps repeats frames
    if times[-2] - times[-3] > 2.0:  # the jump is past iter_frames' seek_gap
        assert stats.seeks >= 1 and stats.decoded < len(every)


def test_iter_frames_before_first_and_after_last_frame():
    path = clip_path("clip")
    every = decode_all(path)
    frames = list(iter_frames(path, [0.0, 0.0, 10.02]))
    assert [f.time_s for f in frames] == pytest.approx([0.0, 0.0, every[-1][0]])
    assert np.array_equal(frames[2].rgb, every[-1][1])


@pytest.mark.parametrize("name", ALL)
def test_frames_have_the_planned_size(name):
    path = clip_path(name)
    info = probe(path)
    times, plan = plan_video(info, max_frames=5, max_visual_tokens=600)
    frames = list(iter_frames(path, times, size=(plan.width, plan.height)))
    assert len(frames) == plan.n_frames == len(times)
    for f in frames:
        assert f.rgb.shape == (plan.height, plan.width, 3)
        assert f.rgb.dtype == np.uint8 and f.rgb.flags["C_CONTIGUOUS"]
        assert f.rgb.std() > 1.0  # a picture, not a blank buffer
    assert plan.width % 28 == 0 and plan.height % 28 == 0


def test_streaming_seeks_instead_of_decoding_everything():
    stats = DecodeStats()
    # keyframes of the shipped clip: 0, 1.65, 3.40, 6.11, 7.90 s
    frames = list(iter_frames(clip_path("clip"), [0.0, 8.5], stats=stats))
    assert [round(f.time_s, 3) for f in frames] == [0.0, 8.483]
    assert stats.seeks == 1
    assert stats.decoded < 40  # of 240: frame 0, then 7.90 s .. 8.5 s


@NO_SHARED
def test_streaming_two_frames_of_bigbuckbunny():
    stats = DecodeStats()  # one keyframe at 0 s: stopping early is the saving
    frames = list(iter_frames(clip_path("bigbuckbunny"), [0.0, 2.64], stats=stats))
    assert len(frames) == 2 and stats.decoded < 132


def test_raw_stream_without_timestamps_or_seeking(tmp_path):
    src = clip_path("clip")
    raw = str(tmp_path / "clip.h264")
    remux(src, raw, "video", format="h264")  # elementary stream: no pts
    info = probe(raw)
    assert info.container == "h264" and info.n_frames is None
    assert info.duration_s == pytest.approx(240 / info.fps, abs=0.1)
    stats = DecodeStats()
    frames = list(iter_frames(raw, [0.0, 3.0, 9.0], stats=stats))
    every = decode_all(src)  # same frames, in the same order
    for f in frames:
        k = round(f.time_s * info.fps)  # times come from counting frames
        assert np.array_equal(f.rgb, every[k][1])
    assert [round(f.time_s * info.fps) for f in frames] == [0, 75, 225]


def test_iter_frames_is_lazy():
    gen = iter_frames(clip_path("clip"), [0.5, 9.5])
    first = next(gen)
    assert first.time_s <= 0.5
    gen.close()  # closing early releases the file; nothing else to check


# ------------------------------------------------------------------ budget


@pytest.mark.parametrize("name", ALL)
def test_budget_is_respected_and_monotone(name):
    info = probe(clip_path(name))
    n = len(sample_times(info))
    prev = 0
    for budget in list(range(100, 1500, 37)) + [2000, 4096, 8192, 100000]:
        try:
            plan = plan_budget(info, n, budget)
        except VideoError:
            assert prev == 0, "a larger budget must not fail"
            continue
        w, h = plan.width, plan.height
        assert plan.total_tokens <= budget
        assert plan.total_tokens >= prev  # a larger budget never gives fewer
        prev = plan.total_tokens
        assert w % 28 == 0 and h % 28 == 0
        assert plan.tokens_per_unit == (w // 28) * (h // 28)
        assert plan.n_units == math.ceil(plan.n_frames / 2)
        assert plan.total_tokens == plan.n_units * plan.tokens_per_unit
        assert mtmd_dyn_size(w, h) == (w, h)  # libmtmd keeps the size
        assert abs(w / h - info.width / info.height) <= 28 / min(w, h)
        assert max(w, h) <= 896
    assert prev > 0


def test_budget_rule_by_hand():
    clip = info_of(10.0, 720, 358)
    full = plan_budget(clip, 21)  # 358/28 = 12.8 -> 13 rows, 720/358*13 = 26.1
    assert (full.width, full.height, full.tokens_per_unit) == (728, 364, 338)
    assert (full.n_units, full.total_tokens, full.budget) == (11, 3718, None)
    assert full.pairs_mergeable and full.odd_last_frame
    small = plan_budget(clip, 21, 2000)  # 11 pairs: <= 181 tokens a pair
    assert (small.width, small.height, small.tokens_per_unit) == (504, 252, 162)
    assert (small.n_frames, small.total_tokens) == (21, 1782)
    cut = plan_budget(clip, 21, 1000)  # floor 224 px: 448x224 = 128 a pair
    assert (cut.width, cut.height, cut.n_frames, cut.total_tokens) == (448, 224, 14, 896)
    assert cut.frames_reduced and not cut.odd_last_frame
    assert cut.describe() == (
        "14 frames at 448x224 (128 tokens per frame "
        "pair, 7 pairs) = 896 visual tokens (budget "
        "1000; 21 frames requested)"
    )
    bikes = plan_budget(info_of(10.0, 640, 272), 20, 152)
    assert (bikes.width, bikes.height, bikes.n_frames) == (532, 224, 2)
    portrait = plan_budget(info_of(10.0, 358, 720), 21)
    assert (portrait.width, portrait.height) == (364, 728)
    big = plan_budget(info_of(10.0, 1280, 720), 11)  # capped by max_side
    assert (big.width, big.height, big.tokens_per_unit) == (896, 504, 576)


def test_plan_video_respreads_dropped_frames():
    info = probe(clip_path("clip"))
    times, plan = plan_video(info, max_visual_tokens=300)
    assert (plan.n_frames, plan.total_tokens) == (4, 256)
    assert times == sample_times(info, max_frames=4)
    assert times == pytest.approx([0, 2.506089, 5.012178, 7.518267])


@pytest.mark.parametrize(
    "budget, grid, words",
    [
        pytest.param(
            127,
            QWEN2_VL,
            "cannot hold one frame pair even at the smallest size "
            r"448x224 \(128 tokens\)",
            id="qwen-127",
        ),
        pytest.param(1, QWEN2_VL, "raise it to at least 128", id="qwen-1"),
        pytest.param(63, SMOLVLM2_VIDEO, "cannot hold one frame", id="smolvlm-63"),
    ],
)
def test_budget_too_small_is_an_error(budget, grid, words):
    with pytest.raises(VideoError, match=words):
        plan_budget(info_of(10.0, 720, 358), 21, budget, grid)


@pytest.mark.parametrize(
    "kw, words",
    [
        pytest.param(kw, words, id=kwargs_id(kw))
        for kw, words in [
            (dict(n_frames=0), "n_frames must be an integer >= 1"),
            (dict(max_visual_tokens=0), "max_visual_tokens must be an integer >= 1"),
            (dict(min_side=500, max_side=400), "must not exceed max_side"),
        ]
    ],
)
def test_plan_budget_rejects_bad_arguments(kw, words):
    args = dict(n_frames=4, max_visual_tokens=1000) | kw
    with pytest.raises(VideoError, match=words):
        plan_budget(info_of(10.0), **args)


def test_pairs_and_odd_frame_count():
    odd = plan_budget(info_of(10.0), 5)
    assert odd.n_units == 3 and odd.odd_last_frame and odd.pairs_mergeable
    assert odd.total_tokens == 3 * odd.tokens_per_unit


def test_tile_grids():
    info = info_of(10.0, 720, 358)
    plan = plan_budget(info, 10, 64 * 4, SMOLVLM2_VIDEO)
    assert (plan.n_frames, plan.total_tokens, plan.width, plan.height) == (4, 256, 512, 254)
    assert not plan.pairs_mergeable and plan.tokens_per_frame == 64
    # libmtmd's idefics3 path: longest side 2048 -> 2048x1018 -> 4x2 tiles
    # + 1 overview, 64 tokens each (SmolVLM2-256M: 512 px, patch 16, x4)
    mtmd = smolvlm_mtmd_grid(512, 16, 4, 2048)
    assert mtmd.tokens_per_tile == 64 and mtmd.tokens(720, 358) == 9 * 64
    assert plan_budget(info, 3, None, mtmd).total_tokens == 3 * 9 * 64


# -------------------------------------------------------------- timestamps


def test_smolvlm_frame_headers():
    """SmolVLM2's timestamps (minutes:seconds, truncated) in the runtime's video text."""
    text = native.smolvlm_video_prompt([12.0, 75.9], -1.0, "")
    assert "\nFrame from 00:12:" in text and "\nFrame from 01:15:" in text


# --------------------------------------------------------------- bad files


def remux(src, dst, kind, format=None, **options):
    """Copy one stream kind of src into dst without re-encoding."""
    with av.open(src) as inp, av.open(dst, "w", format=format, options=options) as out:
        s = getattr(inp.streams, kind)[0]
        o = out.add_stream_from_template(s)
        for pkt in inp.demux(s):
            if pkt.dts is not None:
                pkt.stream = o
                out.mux(pkt)


@pytest.fixture
def bad_files(tmp_path):
    src = clip_path("clip")
    data = Path(src).read_bytes()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a video\n" * 40)
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])  # no index
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    (tmp_path / "folder.mp4").mkdir()
    remux(src, str(tmp_path / "audio.m4a"), "audio")
    remux(src, str(tmp_path / "front.mp4"), "video", movflags="faststart")
    front = (tmp_path / "front.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(front[: len(front) // 2])  # index kept
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "still.jpg")
    return tmp_path


@pytest.mark.parametrize(
    "name, words",
    [
        ("missing.mp4", "video file not found"),
        ("folder.mp4", "is a directory"),
        ("empty.mp4", r"is empty \(0 bytes\)"),
        ("notes.txt", "has no video stream"),
        ("audio.m4a", r"has no video stream \(it holds only audio\)"),
        ("half.mp4", "is not a readable video"),
        ("noise.mp4", "is not a readable video"),
        ("still.jpg", "is a still image"),
    ],
)
def test_unusable_files_are_rejected(bad_files, name, words):
    before = sorted(os.listdir(bad_files))
    for call in (lambda p: probe(p), lambda p: next(iter_frames(p, [0.0]))):
        with pytest.raises(VideoError, match=words) as e:
            call(str(bad_files / name))
        assert isinstance(e.value, InvalidArgumentError)
        assert "\n" not in str(e.value)
    assert sorted(os.listdir(bad_files)) == before  # nothing written


def test_truncated_video_fails_while_streaming(bad_files):
    path = str(bad_files / "cut.mp4")
    info = probe(path)  # the index is intact, the data stops half way
    assert info.duration_s == pytest.approx(10.02, abs=0.01)
    frames = []
    with pytest.raises(VideoError, match="truncated or corrupt"):
        for f in iter_frames(path, sample_times(info, fps=1)):
            frames.append(f)
    assert 1 <= len(frames) < 11


@pytest.mark.parametrize(
    "times, size, words",
    [
        pytest.param([1.0, 0.5], None, "increasing order", id="times-decreasing"),
        pytest.param([-1.0], None, "must be >= 0", id="negative-time"),
        pytest.param([0.0], (0, 10), "width must be an integer", id="zero-width"),
        pytest.param([0.0], (10,), "size must be", id="size-of-one-value"),
    ],
)
def test_iter_frames_rejects_bad_arguments(times, size, words):
    with pytest.raises(VideoError, match=words):
        list(iter_frames(clip_path("clip"), times, size=size))


# ------------------------------------------------------------------ images


def test_read_image(tmp_path):
    from PIL import Image

    rgba = Image.new("RGBA", (30, 20), (10, 20, 30, 128))
    rgba.save(tmp_path / "a.png")
    pal = Image.new("P", (8, 6), 3)
    pal.save(tmp_path / "p.gif")
    img = read_image(tmp_path / "a.png")
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (10, 20, 30)
    assert read_image(tmp_path / "p.gif").shape == (6, 8, 3)
    frame = next(iter_frames(clip_path("clip"), [1.0]))
    Image.fromarray(frame.rgb).save(tmp_path / "f.jpg", quality=95)
    shutil.copy(tmp_path / "f.jpg", tmp_path / "copy.jpg")
    back = read_image(tmp_path / "copy.jpg")
    assert back.shape == frame.rgb.shape
    assert np.abs(back.astype(int) - frame.rgb).mean() < 4


@pytest.mark.parametrize(
    "name, words",
    [
        pytest.param("cut.jpg", "not a decodable image", id="truncated-jpeg"),
        pytest.param("junk.png", "not a decodable image", id="not-a-png"),
        pytest.param("nope.png", "image file not found", id="missing"),
    ],
)
def test_read_image_refuses(tmp_path, name, words):
    from PIL import Image

    frame = next(iter_frames(clip_path("clip"), [1.0]))
    Image.fromarray(frame.rgb).save(tmp_path / "f.jpg", quality=95)
    jpg = (tmp_path / "f.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpg[: len(jpg) // 3])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(VideoError, match=words):
        read_image(tmp_path / name)


def test_read_image_without_pillow(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (30, 20), (10, 20, 30)).save(tmp_path / "a.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)  # as if absent
    img = read_image(tmp_path / "a.png")  # decoded by PyAV instead
    assert img.shape == (20, 30, 3) and tuple(img[5, 5]) == (10, 20, 30)
    with pytest.raises(VideoError, match="not a decodable image"):
        read_image(tmp_path / "junk.png")
