"""The batched capture path: job gathering, gathered writes, and output that does not
depend on how pages were cut into jobs or how many threads compressed them."""

from __future__ import annotations

import os

import numpy as np
import pytest

from kdumpy.capture import pipeline as P
from kdumpy.capture.targets import LocalTarget
from kdumpy.formats import bitmap as bm
from kdumpy.formats.codecs import CODECS, Codec
from kdumpy.formats.flattened import reassemble
from kdumpy.formats.sink import FileSink, FlatSink
from kdumpy.dump import open_dump


def _save(src: str, dest: str, **kw) -> bytes:
    opts = P.SaveOptions(**kw)
    with open_dump(src) as mem:
        P.save(mem, lambda: LocalTarget(dest), opts)
    with open(dest, "rb") as f:
        data = f.read()
    os.unlink(dest)
    return data


def test_jobs_gather_runs_in_pfn_order():
    bitmap = bm.new_bitmap(200)
    for s, e in ((3, 5), (10, 11), (20, 47), (100, 103), (150, 200)):
        bm.set_range(bitmap, s, e)

    want = [p for s, e in bm.runs(bitmap, 200) for p in range(s, e)]
    for size in (1, 2, 7, 16, 1000):
        jobs = list(P._jobs(bm.runs(bitmap, 200), size))
        got = [p for job in jobs for s, n in job for p in range(s, s + n)]
        assert got == want, size
        assert all(sum(n for _, n in job) <= size for job in jobs)
        assert all(sum(n for _, n in job) == size for job in jobs[:-1])  # only the last is short


@pytest.mark.parametrize("codec", ["lzo", "zlib", "zstd"])
def test_output_independent_of_job_size_and_threads(tmp_path, synth_core, codec):
    out = str(tmp_path / "d")
    ref = _save(synth_core.path, out, dump_level=1, compress=codec, threads=1, batch_pages=1)
    for batch, threads in ((3, 1), (64, 1), (512, 1), (5, 2), (512, 3)):
        assert _save(synth_core.path, out, dump_level=1, compress=codec, threads=threads,
                     batch_pages=batch) == ref, (batch, threads)


def test_codec_error_stores_the_page_raw(tmp_path, synth_core, monkeypatch):
    zlib = CODECS["zlib"]

    def flaky(page: bytes) -> bytes:
        if page[:7] == b"kdumpy ":  # the text pages: the codec "fails" on them
            raise ValueError("boom")
        return zlib.compress(page)

    monkeypatch.setitem(CODECS, "zlib", Codec("zlib", zlib.flag, flaky, zlib.decompress))
    out = str(tmp_path / "d")
    opts = P.SaveOptions(dump_level=1, compress="zlib", threads=1)
    with open_dump(synth_core.path) as mem:
        P.save(mem, lambda: LocalTarget(out), opts)
    with open_dump(out) as mem:
        f = mem.files[0]  # type: ignore[attr-defined]
        text = [p for p, d in synth_core.pages.items() if d[:7] == b"kdumpy "]
        assert text
        for pfn in text:
            assert mem.read_pfn(pfn) == synth_core.pages[pfn]
        bits, idx = f.ranks(text[0], 1)
        d = f.descs[idx[0]]
        assert d["flags"] == 0 and d["size"] == 4096


def test_file_sink_pwritev_many_parts(tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        sink = FileSink(fd, writeback_every=5000)
        rng = np.random.default_rng(1)
        parts = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes()
                 for n in rng.integers(1, 300, 2500)]   # more than IOV_MAX buffers
        sink.pwritev(100, parts)
        sink.pwritev(0, [b"head", memoryview(b"er")])
        assert sink.high_water == 100 + sum(map(len, parts))
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert data[:6] == b"header"
    assert data[100:] == b"".join(parts)


def test_flat_sink_pwritev_is_one_record(tmp_path):
    flat = tmp_path / "flat"
    with open(flat, "wb") as f:
        sink = FlatSink(f)
        sink.pwritev(8192, [b"abc", b"", memoryview(b"defg")])
        sink.pwritev(0, [b"xy"])
        sink.pwritev(50, [])
        sink.close()
    out = tmp_path / "out"
    with open(flat, "rb") as src, open(out, "wb") as dst:
        reassemble(src, dst.fileno())
    data = out.read_bytes()
    assert data[:2] == b"xy" and data[8192:8199] == b"abcdefg" and len(data) == 8199
