"""The direct tar parser reads what `tarfile` reads, for archives written in every common tar dialect."""

from __future__ import annotations

import io
import re
import tarfile
import warnings

import pytest
import webdataset as wds

from mmfuse.data.tario import iter_members, tar_samples

MEMBERS = [
    ("a/000.txt", b"hello"),
    ("a/000.jpg", bytes(range(256)) * 3),
    ("a/001.txt", b""),  # an empty member
    ("a/001.cls", b"7"),
    ("deep/" + "d" * 120 + "/002.txt", b"a name longer than 100 bytes"),
    ("n\u00e4me-\u00fc/003.txt", b"non-ascii name"),
    ("a/004.flac", b"x" * 5000),
]


def _archive(fmt: int, compression: str = "") -> bytes:
    """MEMBERS (those the format can hold) after a directory, and a symlink at the end."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}", format=fmt) as tar:
        directory = tarfile.TarInfo("a")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for name, data in MEMBERS:
            if fmt == tarfile.USTAR_FORMAT and not (name.isascii() and len(name) < 100):
                continue  # plain ustar cannot store non-ASCII or long single-component names
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5  # a float mtime makes PAX write an extended header
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("a/link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "000.txt"
        tar.addfile(link)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_reads_every_dialect_like_tarfile(fmt, compression):
    data = _archive(fmt, compression)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isreg()]
    assert list(iter_members(io.BytesIO(data))) == expected
    assert len(expected) >= 5


def test_ustar_prefix_field():
    name = "p" * 90 + "/" + "q" * 60 + "/005.txt"  # > 100 bytes: ustar splits it into prefix + name
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    assert list(iter_members(io.BytesIO(buf.getvalue()))) == [(name, b"abc")]


def test_damaged_archives_raise_read_error():
    good = _archive(tarfile.GNU_FORMAT)
    with pytest.raises(tarfile.ReadError, match=r"cut.tar: truncated header at byte 1536"):
        list(iter_members(io.BytesIO(good[:2000]), "cut.tar"))  # directory, a/000.txt, then half a header
    with pytest.raises(tarfile.ReadError, match=r"cut.tar: member at byte 1536 is cut short \(52 of 1024"):
        list(iter_members(io.BytesIO(good[:2100]), "cut.tar"))
    flipped = bytearray(good)
    flipped[10] ^= 0xFF  # inside the first header's name: the checksum no longer matches
    with pytest.raises(tarfile.ReadError, match=r"bad.tar: bad header checksum at byte 0"):
        list(iter_members(io.BytesIO(bytes(flipped)), "bad.tar"))
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(iter_members(io.BytesIO(b"this is not a tar file at all" * 40)))


def test_stage_matches_webdataset_on_its_own_shards(tmp_path):
    """Shards written by webdataset's TarWriter (with __meta__ members) group into the same samples."""
    path = tmp_path / "wds-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        for i in range(20):
            sink.write({"__key__": f"s{i:03d}", "txt": f"item {i}", "cls": str(i % 3), "json": {"i": i}})
    with tarfile.open(path, "a") as tar:  # a meta member that both readers skip
        info = tarfile.TarInfo("__index__")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    ours = list(wds.DataPipeline(wds.SimpleShardList([str(path)]), tar_samples()))
    theirs = list(wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples()))
    assert ours == theirs
    assert [s["__key__"] for s in ours] == [f"s{i:03d}" for i in range(20)]


def test_stage_hands_damaged_shards_to_the_handler(tmp_path):
    good, bad = tmp_path / "good.tar", tmp_path / "bad.tar"
    good.write_bytes(_archive(tarfile.GNU_FORMAT))
    bad.write_bytes(_archive(tarfile.GNU_FORMAT)[:4700])  # a/000 complete, the shard breaks inside a/001
    seen = []
    pipeline = wds.DataPipeline(wds.SimpleShardList([str(bad), str(good)]),
                                tar_samples(handler=lambda exn: seen.append(str(exn)) or True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples = [(s["__url__"], s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in pipeline]
    # the damaged shard's complete sample comes through whole; the one it broke in is dropped, never half-read
    assert samples[0] == (str(bad), "a/000", ["jpg", "txt"])
    assert {url for url, _, _ in samples[1:]} == {str(good)}
    assert len(seen) == 1 and re.search(r"bad.tar: (truncated header|member at byte \d+ is cut short)", seen[0])
