"""Hostile media never kill the process and never take unbounded memory (issue 14, items 1 and 2).

Fixtures are built in tmp_path: a PNG with one flipped byte in its compressed data (libpng under torchvision.io
segfaults on it), a decompression-bomb PNG (15000 x 15000 in ~220 KB), a long FLAC, and a tar member over the size
limit. Each must become a counted, named refusal or skip -- through `mmfuse shard` (1 and 2 workers), the loader
(0 and 2 workers), `mmfuse embed --shards` and `Predictor.embed` -- and the bombs are measured in a subprocess.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import write_tar
from PIL import Image

import mmfuse
from mmfuse.cli import main
from mmfuse.data.checks import check_audio
from mmfuse.data.info import DatasetInfo
from mmfuse.data.loader import make_loader, read_records
from mmfuse.data.manifest import ShardConfig
from mmfuse.data.shard import write_shards
from mmfuse.encoders.audio_io import AudioPreprocessor, decode_audio
from mmfuse.encoders.base import Preprocessor
from mmfuse.encoders.image_io import decode_image, jpeg_size
from mmfuse.errors import ConfigError, DataError, FieldError
from mmfuse.limits import LimitExceeded, max_image_pixels

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def noise(size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def flipped_png() -> bytes:
    """A valid noise PNG with one byte of its compressed pixel data inverted (same size; libpng: 'IDAT: incorrect
    data check', which torchvision.io turns into SIGSEGV)."""
    data = bytearray(png(noise(64)))
    data[100] ^= 0xFF  # inside the IDAT chunk (the header chunks end at byte 33)
    return bytes(data)


@functools.cache
def bomb_png(side: int = 15000) -> bytes:
    """A side x side black greyscale PNG: a few hundred KB that decode to side^2 bytes (x3 as RGB), written row
    block by row block so making it takes no memory either."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer, rows, blocks = zlib.compressobj(9), bytes(side + 1) * 500, []  # each row: filter byte 0, then pixels
    for start in range(0, side, 500):
        blocks.append(packer.compress(rows[: (side + 1) * min(500, side - start)]))
    blocks.append(packer.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(blocks)) + chunk(b"IEND", b"")


def run_python(code: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter importing this checkout's mmfuse."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=environ)


def peak_rss(code: str, **env: str) -> int:
    """Peak resident memory in bytes of `code` run in a subprocess (it must exit 0)."""
    probe = f"""
    import resource, subprocess, sys
    done = subprocess.run([sys.executable, "-c", {textwrap.dedent(code)!r}])
    assert done.returncode == 0, done.returncode
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    """
    result = run_python(probe, **env)
    assert result.returncode == 0, result.stderr[-2000:]
    peak = int(result.stdout.split()[-1])
    print(f"peak RSS {peak / 2**20:.0f} MiB")  # shown with pytest -s
    return peak


# -- decoding --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_flipped_png_kills_torchvision_in_process():
    """The fixture is the real thing: torchvision.io.decode_image dies of SIGSEGV on it (if a future torchvision
    raises instead, the fixture is still a corrupt PNG and the rest of the file still applies)."""
    code = """
    import sys, torch
    from torchvision.io import ImageReadMode, decode_image
    data = sys.stdin.buffer.read()
    try:
        decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        sys.exit(3)
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], input=flipped_png(), capture_output=True,
                            timeout=120)
    if result.returncode == 3:
        pytest.skip("this torchvision raises on the flipped PNG instead of crashing")
    assert result.returncode == -signal.SIGSEGV, result.stderr[-500:]


def test_corrupt_and_bomb_images_raise():
    with pytest.raises(OSError):
        decode_image(flipped_png())
    with pytest.raises(LimitExceeded, match=r"too many pixels \(225000000"):
        decode_image(bomb_png())
    with pytest.raises(LimitExceeded, match=r"too many pixels \(9000x9000 = 81000000; the limit is 67108864"):
        decode_image(bomb_png(9000))
    side = 12000  # a JPEG bomb: refused from its frame header, before libjpeg allocates anything
    big = jpeg(np.zeros((8, 8, 3), np.uint8))
    frame = big.index(b"\xff\xc0")
    big = big[:frame + 5] + side.to_bytes(2, "big") + side.to_bytes(2, "big") + big[frame + 9:]
    assert jpeg_size(big) == (side, side)
    with pytest.raises(LimitExceeded, match="12000x12000"):
        decode_image(big)


def test_only_the_four_image_formats_are_opened():
    from PIL import UnidentifiedImageError

    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"  # PIL would hand it to Ghostscript
    with pytest.raises(UnidentifiedImageError):
        decode_image(eps)
    buf = io.BytesIO()
    Image.fromarray(noise()).save(buf, format="WEBP")
    assert decode_image(buf.getvalue()).shape == (3, 32, 32)


def test_decoded_pixels_match_torchvision():
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode

    for data in (png(noise()), jpeg(noise()), png(noise()[..., 0])):
        ours = decode_image(data)
        theirs = tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        assert ours.dtype == torch.uint8 and torch.equal(ours, theirs)


def test_pixel_limit_is_configurable(monkeypatch):
    monkeypatch.setenv("MMFUSE_MAX_IMAGE_PIXELS", "1000")
    assert max_image_pixels() == 1000
    with pytest.raises(LimitExceeded, match="limit is 1000"):
        decode_image(png(noise(32)))
    monkeypatch.setenv("MMFUSE_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ConfigError, match="MMFUSE_MAX_IMAGE_PIXELS='lots'"):
        max_image_pixels()


# -- mmfuse shard ----------------------------------------------------------------------------------------------


@pytest.fixture
def hostile_manifest(tmp_path) -> Path:
    """Four rows: a good JPEG, the flipped PNG, the bomb PNG, a good PNG (file names end in .png/.jpg)."""
    media = {"good": jpeg(noise(seed=1)), "flipped": flipped_png(), "bomb": bomb_png(), "fine": png(noise(seed=2))}
    rows = []
    for key, data in media.items():
        (tmp_path / f"{key}.img").write_bytes(data)
        rows.append({"key": key, "text": f"item {key}", "image": f"{key}.img", "label": "a", "split": "train"})
    manifest = tmp_path / "items.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.mark.parametrize("workers", [1, 2])
def test_shard_refuses_corrupt_and_bomb_images(hostile_manifest, tmp_path, workers, capsys):
    out = tmp_path / f"out{workers}"
    code = main(["shard", "--manifest", str(hostile_manifest), "--out", str(out), "--split", "split",
                 "--audio", "", "--workers", str(workers), "--no-progress"])
    assert code == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    rejects = {r["key"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert set(rejects) == {"flipped", "bomb"}
    assert rejects["flipped"]["field"] == "image" and "unreadable or truncated PNG" in rejects["flipped"]["reason"]
    assert rejects["bomb"]["reason"].startswith("too many pixels (225000000")
    assert json.loads((out / "dataset.json").read_text())["rejected"] == 2


def test_shard_strict_names_the_row(hostile_manifest, tmp_path, capsys):
    code = main(["shard", "--manifest", str(hostile_manifest), "--out", str(tmp_path / "o"), "--split", "split",
                 "--audio", "", "--strict", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("mmfuse: error: ") and "items.jsonl:2: record 'flipped': image: unreadable" in err


def _kill_on_flipped(config, row, key, targets):
    if key == "flipped":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"__key__": key, "txt": "x", **targets}


@pytest.mark.timeout(120)
def test_shard_worker_that_dies_is_reported_not_waited_on(hostile_manifest, tmp_path, monkeypatch):
    import mmfuse.data.shard as shard

    monkeypatch.setattr(shard, "check_row", _kill_on_flipped)  # forked workers inherit it
    config = ShardConfig(manifest=str(hostile_manifest), out=str(tmp_path / "o"), split="split", audio=None,
                         workers=2, progress=False)
    with pytest.raises(DataError, match=r"a media check worker process died .* lines \d+-\d+"):
        write_shards(config)
    assert not (tmp_path / "o").exists()


def test_manifest_file_over_the_size_limit_is_refused(hostile_manifest, tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSE_MAX_MEMBER_BYTES", "100000")  # the bomb PNG (~220 KB) is over it
    report = write_shards(ShardConfig(manifest=str(hostile_manifest), out=str(tmp_path / "o"), split="split",
                                      audio=None, progress=False))
    assert report.reasons == {"image: unreadable or truncated PNG image": 1, "image: file too large": 1}
    rejects = [json.loads(line) for line in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    assert rejects[1]["reason"].startswith("file too large (") and rejects[1]["reason"].endswith("bomb.img")


# -- shards: loader and embed --shards ---------------------------------------------------------------------------


@pytest.fixture
def hostile_shards(tmp_path) -> Path:
    """A shard with a good sample, the flipped PNG, the bomb PNG and another good one; a gzip shard with one
    2 MB member (over a 1 MB MMFUSE_MAX_MEMBER_BYTES, under the default)."""
    data = tmp_path / "shards"
    data.mkdir()
    good = png(noise(32))
    write_tar(data / "train-000000.tar", [
        ("ok1", {"txt": b"one", "png": good, "cls": b"0"}),
        ("flipped", {"txt": b"two", "png": flipped_png(), "cls": b"1"}),
        ("bomb", {"txt": b"three", "png": bomb_png(), "cls": b"0"}),
        ("ok2", {"txt": b"four", "png": good, "cls": b"1"}),
    ])
    plain = tmp_path / "plain.tar"
    write_tar(plain, [("huge", {"txt": b"five", "png": good + b"\0" * (2 << 20), "cls": b"0"}),
                      ("ok3", {"txt": b"six", "png": good, "cls": b"1"})])
    (data / "train-000001.tar.gz").write_bytes(gzip.compress(plain.read_bytes(), 1))
    meta = {"modalities": {"text": ["txt"], "image": ["png"]}, "labels": ["a", "b"],
            "splits": {"train": {"count": 6, "shards": [{"path": "train-000000.tar", "count": 4},
                                                        {"path": "train-000001.tar.gz", "count": 2}]}}}
    (data / "dataset.json").write_text(json.dumps(meta))
    return data


def test_a_header_declaring_8_gb_is_never_allocated(tmp_path):
    """A 10 KB tar whose header says 8 GB: read past in 1 MiB chunks, then 'cut short' (no 8 GB read() buffer)."""
    from mmfuse.data.tario import iter_members
    from mmfuse.limits import max_member_bytes

    path = tmp_path / "liar.tar"
    write_tar(path, [("a", {"txt": b"x" * 5000})])
    header = bytearray(path.read_bytes())
    header[124:136] = b"%011o\0" % (8 << 30)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    path.write_bytes(bytes(header))
    with open(path, "rb") as stream, pytest.raises(tarfile.ReadError, match=r"liar.tar: member at byte 0 is cut short"):
        list(iter_members(stream, str(path), max_member_bytes()))


def skips(batches: list[dict]) -> dict[str, int]:
    total: dict[str, int] = {}
    for batch in batches:
        for reason, n in batch["skipped"].items():
            total[reason] = total.get(reason, 0) + n
    return total


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_skips_and_counts_hostile_images(hostile_shards, preprocessors, workers, monkeypatch):
    monkeypatch.setenv("MMFUSE_MAX_MEMBER_BYTES", str(1 << 20))
    info = DatasetInfo.load(hostile_shards)
    batches = list(make_loader(info, "train", preprocessors, 4, num_workers=workers))
    assert sorted(k for b in batches for k in b["key"]) == ["ok1", "ok2", "ok3"]
    assert skips(batches) == {"image: cannot decode": 1, "image: too many pixels": 1,
                              "image: tar member too large": 1}


def test_loader_strict_names_shard_sample_and_reason(hostile_shards, preprocessors):
    with pytest.raises(DataError, match=r"train-000000.tar: sample 'flipped': image: cannot decode \(OSError"):
        list(make_loader(DatasetInfo.load(hostile_shards), "train", preprocessors, 4, strict=True))


class KillOn(Preprocessor):
    """Kills its (worker) process on one key's text: a decoder crash, as far as the loader can tell."""

    modality = "text"

    def transform(self, value):
        if value == b"two":
            os.kill(os.getpid(), signal.SIGSEGV)
        return 0

    def collate(self, values):
        return {"n": torch.tensor(values)}


@pytest.mark.timeout(120)
def test_loader_worker_that_dies_is_one_data_error(hostile_shards):
    loader = make_loader(DatasetInfo.load(hostile_shards), "train", {"text": KillOn()}, 2, num_workers=2)
    with pytest.raises(DataError, match=r"split 'train': a loader worker process died \(DataLoader worker"):
        list(loader)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_finetune_with_loader_workers_skips_and_counts_hostile_images(demo_shards, tmp_path, capsys):
    """The flipped PNG and the bomb stored as `.jpg` members of an extra train shard (what once killed finetune)."""
    from test_cli import TINY_FLAGS

    data = tmp_path / "data"
    shutil.copytree(demo_shards, data)
    write_tar(data / "hostile.tar", [("flipped", {"txt": b"an oak toy", "jpg": flipped_png(), "cls": b"0"}),
                                     ("bomb", {"txt": b"a steel toy", "jpg": bomb_png(), "cls": b"1"})])
    meta = json.loads((data / "dataset.json").read_text())
    meta["splits"]["train"]["shards"].append({"path": "hostile.tar", "count": 2})
    meta["splits"]["train"]["count"] += 2
    (data / "dataset.json").write_text(json.dumps(meta))
    code = main(["finetune", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--workers", "2",
                 *TINY_FLAGS])
    assert code == 0, capsys.readouterr().err
    summary = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mmfuse: skipped"))
    assert summary.startswith("mmfuse: skipped 2 samples: ")
    assert "image: cannot decode x1" in summary and "image: too many pixels x1" in summary
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_total"] == 2


def test_cli_reports_a_dead_loader_worker_in_one_line(monkeypatch, capsys):
    """torch's SIGCHLD handler raises wherever the main thread is (mid-step, say): still one line, exit 2."""
    import mmfuse.commands.list as list_command

    def crash(args):
        raise RuntimeError("DataLoader worker (pid 123) is killed by signal: Segmentation fault. ")

    monkeypatch.setattr(list_command, "run", crash)
    assert main(["list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert err.startswith("mmfuse: error: a loader worker process died (DataLoader worker (pid 123) is killed")


def test_embed_shards_lists_hostile_samples_in_rejects(hostile_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMFUSE_MAX_MEMBER_BYTES", str(1 << 20))
    out = tmp_path / "emb"
    code = main(["embed", "--run", "tiny_bottleneck", "--shards", str(hostile_shards), "--out", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    rejects = {r["id"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert set(rejects) == {"flipped", "bomb", "huge"}
    assert "OSError" in rejects["flipped"]["reason"]
    assert "too many pixels (225000000" in rejects["bomb"]["reason"]
    assert rejects["huge"]["reason"].startswith("image: tar member too large (")
    assert json.loads((out / "metadata.json").read_text())["counts"]["exported"] == 3
    assert "huge" in {r["key"]: r for r in read_records(DatasetInfo.load(hostile_shards), "train")
                      if "_refused" in r}


# -- the library API ---------------------------------------------------------------------------------------------


def test_predictor_survives_one_bad_upload():
    predictor = mmfuse.load("tiny_bottleneck")
    with pytest.raises(DataError, match=r"record '0': image: OSError"):
        predictor.embed([{"image": flipped_png()}])
    with pytest.raises(DataError, match=r"record 'b': image: LimitExceeded: too many pixels"):
        predictor.embed([{"key": "b", "image": bomb_png()}])
    assert predictor.embed([{"image": png(noise())}]).shape == (1, predictor.dim)  # and it goes on serving


# -- audio -----------------------------------------------------------------------------------------------------


def test_audio_reads_only_what_the_encoder_uses(tmp_path):
    rate = 8000
    wave = np.sin(np.arange(60 * rate) / 7.0).astype(np.float32) * 0.5
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="FLAC")
    data, got_rate = decode_audio(buf.getvalue(), 16000, max_seconds=2.0)
    assert got_rate == rate and len(data) == 2 * rate + rate // 100  # 2 s plus 10 ms for the resampler
    pre = AudioPreprocessor(16000, max_seconds=2.0)
    head = pre.transform(buf.getvalue())
    import torchaudio.functional as AF

    whole = AF.resample(torch.from_numpy(sf.read(io.BytesIO(buf.getvalue()), dtype="float32")[0]), rate, 16000)
    assert head.shape == (32000,) and torch.allclose(head, whole[:32000], atol=1e-5)  # the crop is unchanged


def test_shard_audio_check_reads_in_blocks_up_to_the_limit(monkeypatch):
    rate = 8000
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([np.zeros(5 * rate), np.ones(rate) * 0.1]).astype(np.float32), rate, format="WAV")
    assert check_audio(buf.getvalue(), "wav") == "wav"
    monkeypatch.setenv("MMFUSE_MAX_AUDIO_SECONDS", "2")  # the sound starts after 5 s: only silence is read
    with pytest.raises(FieldError, match=r"silent audio \(all 16000 samples are 0\)"):
        check_audio(buf.getvalue(), "wav")


# -- bounded memory, measured in a subprocess ------------------------------------------------------------------


def long_flac(path: Path, seconds: int = 30 * 60, rate: int = 96000) -> Path:
    """A `seconds`-long mono 96 kHz FLAC of a quiet tone, written in blocks (a few MB on disk)."""
    tone = (0.01 * np.sin(np.arange(rate) * 2 * np.pi * 440 / rate)).astype(np.float32)
    with sf.SoundFile(path, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write(tone)
    return path


EMBED = """
import mmfuse
from pathlib import Path
predictor = mmfuse.load("tiny_bottleneck")
try:
    predictor.embed([{"image": Path(IMAGE).read_bytes()}])
except mmfuse.errors.DataError as err:
    assert "too many pixels" in str(err), err
assert predictor.embed([{"audio": Path(AUDIO).read_bytes()}]).shape[0] == 1
"""
CHECK = """
from pathlib import Path
from mmfuse.data.checks import check_audio, check_image
from mmfuse.errors import FieldError
assert check_audio(Path(AUDIO).read_bytes(), "flac") == "flac"
try:
    check_image(Path(IMAGE).read_bytes(), "png")
except FieldError as err:
    assert err.reason.startswith("too many pixels"), err
"""


@pytest.mark.slow
@pytest.mark.parametrize("script", [EMBED, CHECK], ids=["embed", "shard-check"])
def test_bomb_png_and_long_flac_in_bounded_memory(tmp_path, script):
    """Peak RSS over the same script on a 32 px PNG and a 1 s FLAC stays under 256 MiB, and under 1 GiB in all
    (most of a process's RSS here is torch's shared libraries: `import torch` alone is ~630 MiB with CUDA)."""
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    (tmp_path / "small.png").write_bytes(png(noise()))
    flac = long_flac(tmp_path / "long.flac")
    small = long_flac(tmp_path / "small.flac", seconds=1)

    def run(image: Path, audio: Path) -> int:
        return peak_rss(script.replace("IMAGE", repr(str(image))).replace("AUDIO", repr(str(audio))))

    baseline, hostile = run(tmp_path / "small.png", small), run(tmp_path / "bomb.png", flac)
    assert hostile - baseline < 256 * 2**20 and hostile < GiB


class Zeros(io.RawIOBase):
    """An endless stream of zero bytes."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = bytes(len(buffer))
        return len(buffer)


@pytest.mark.slow
def test_oversize_member_in_a_gzip_shard_is_skipped_in_bounded_memory(tmp_path):
    """A 1.2 GB member (default limit 256 MB) in a gzip shard: skipped over in chunks, never held."""
    shard = tmp_path / "train-000000.tar.gz"
    with tarfile.open(shard, "w:gz", compresslevel=1) as tar:
        member = tarfile.TarInfo("big.png")
        member.size = 1200 << 20
        tar.addfile(member, io.BufferedReader(Zeros()))
        for key, data in (("big", b"x"), ("ok", b"fine")):
            info = tarfile.TarInfo(f"{key}.txt" if key == "ok" else "big.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    meta = {"modalities": {"text": ["txt"], "image": ["png"]}, "labels": [], "task": "none",
            "splits": {"train": {"count": 2, "shards": [{"path": shard.name, "count": 2}]}}}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    setup = """
    from mmfuse.data.info import DatasetInfo
    from mmfuse.data.loader import make_loader
    from mmfuse.encoders import create_encoder
    pre = {"text": create_encoder("tiny-text").preprocessor, "image": create_encoder("tiny-image").preprocessor}
    """
    read = f"""
    batches = list(make_loader(DatasetInfo.load({str(tmp_path)!r}), "train", pre, 4))
    assert [k for b in batches for k in b["key"]] == ["ok"], batches
    assert batches[0]["skipped"] == {{"image: tar member too large": 1}}, batches[0]["skipped"]
    """
    baseline, hostile = peak_rss(setup), peak_rss(textwrap.dedent(setup) + textwrap.dedent(read))
    assert hostile - baseline < 256 * 2**20 and hostile < GiB
