"""Hostile names and paths (issue 14, item 5): a manifest, a dataset.json or a run directory from elsewhere never
makes mmfuse write outside `--out` or read files outside what it describes; each refusal is one line, exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY_MODEL

import mmfuse
from mmfuse.checkpoint import load_checkpoint, save_checkpoint
from mmfuse.cli import main
from mmfuse.data.info import DatasetInfo
from mmfuse.data.manifest import ShardConfig
from mmfuse.data.shard import write_shards
from mmfuse.encoders.registry import saved_kwargs
from mmfuse.errors import ConfigError, DataError
from mmfuse.model import ModelConfig
from mmfuse.names import inside, split_name_problem
from mmfuse.tasks import create_model_and_task


def tree(root: Path) -> dict[str, int]:
    """Every path under `root` with its size (directories: -1): a snapshot to compare before and after."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in sorted(root.rglob("*"))}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmfuse: error: "), err
    return err[0]


def text_manifest(path: Path, splits: list[str]) -> Path:
    path.write_text("".join(json.dumps({"key": f"k{i}", "text": f"an oak toy {i}", "label": "a", "part": s}) + "\n"
                            for i, s in enumerate(splits)))
    return path


# ---- split names -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train", "val", "test", "part-1", "fold_2", "A9"])
def test_plain_split_names_pass(name):
    assert split_name_problem(name) is None


@pytest.mark.parametrize("name", ["../x", "../../../other_dataset/train", "/tmp/x", "a/b", "a\\b", ".hidden", "-x",
                                  "x" * 65, "a b", "tr\x00ain", "", 3])
def test_other_split_names_are_refused(name):
    assert "not allowed" in split_name_problem(name)


@pytest.mark.parametrize("cell", ["../x", "../../../other_dataset/train", "ABSOLUTE", "a/b"])
def test_shard_refuses_a_traversing_split_cell_and_writes_nothing(tmp_path, capsys, cell):
    cell = str(tmp_path / "elsewhere" / "x") if cell == "ABSOLUTE" else cell
    manifest = text_manifest(tmp_path / "items.jsonl", ["train", cell, "test"])
    before = tree(tmp_path)
    code = main(["shard", "--manifest", str(manifest), "--out", str(tmp_path / "out" / "shards"), "--split", "part",
                 "--image", "", "--audio", "", "--no-progress"])
    assert code == 2
    line = one_error_line(capsys)
    assert f"items.jsonl:2: record 'k1': part: split name {cell[:40]!r}"[:-1] in line and "is not allowed" in line
    assert tree(tmp_path) == before  # nothing written anywhere, --out included


def test_an_empty_split_cell_is_a_listed_refusal_inside_out(tmp_path, capsys):
    manifest = text_manifest(tmp_path / "items.jsonl", ["train", "", "train"])
    out = tmp_path / "out"
    assert main(["shard", "--manifest", str(manifest), "--out", str(out), "--split", "part", "--image", "",
                 "--audio", "", "--no-progress"]) == 0
    assert "part: missing split x1" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.jsonl", "out"]
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "rejects.jsonl", "train-000000.tar"]


def test_fraction_and_from_shards_split_names_are_checked(tmp_path, capsys):
    manifest = text_manifest(tmp_path / "items.jsonl", ["train"])
    before = tree(tmp_path)
    assert main(["shard", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--fractions",
                 "../../x=1.0", "--image", "", "--audio", ""]) == 2
    assert "split fractions: split name '../../x' is not allowed" in one_error_line(capsys)
    assert main(["shard", "--from-shards", f"/tmp/x={tmp_path}/*.tar", "--map", "txt=text",
                 "--out", str(tmp_path / "out")]) == 2
    assert "split name '/tmp/x' is not allowed" in one_error_line(capsys)
    assert tree(tmp_path) == before
    with pytest.raises(DataError, match="not allowed"):
        write_shards(ShardConfig(manifest=str(manifest), out=str(tmp_path / "o"), fractions={"a/b": 1.0},
                                 image=None, audio=None))


# ---- dataset.json --------------------------------------------------------------------------------------------------


@pytest.fixture
def dataset_copy(demo_shards, tmp_path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(demo_shards, copy)
    return copy


def edit_json(path: Path, edit) -> None:
    """Apply `edit` to the JSON object in `path`, in place."""
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def edit_dataset(folder: Path, edit) -> None:
    edit_json(folder / "dataset.json", edit)


@pytest.mark.parametrize("path", ["/etc/passwd", "../../../../../../etc/passwd", "/dev/zero", "../../../../dev/zero",
                                  "~/x.tar", "", None, "pipe:touch PWNED;.tar" + "x"])
def test_dataset_json_shard_paths_that_leave_the_shards_are_refused(dataset_copy, path):
    def edit(meta):
        meta["splits"]["train"]["shards"][0]["path"] = path

    edit_dataset(dataset_copy, edit)
    refused = (r"dataset.json: split 'train' must be \{\"shards\"" if path is None  # not a string: a type error
               else r"dataset.json: shard path .* of split 'train' is not allowed")
    with pytest.raises(DataError, match=refused) as err:
        DatasetInfo.load(dataset_copy)
    assert "\n" not in str(err.value)


def test_dataset_json_escape_through_the_cli_is_one_line(dataset_copy, tmp_path, capsys):
    edit_dataset(dataset_copy, lambda meta: meta["splits"]["val"]["shards"][0].update(path="/etc/passwd"))
    before = tree(tmp_path)
    assert main(["embed", "--run", "tiny_bottleneck", "--shards", str(dataset_copy), "--out", str(tmp_path / "emb"),
                 "--no-progress"]) == 2
    assert "shard path '/etc/passwd' of split 'val' is not allowed" in one_error_line(capsys)
    assert tree(tmp_path) == before


def test_dataset_json_split_names_are_checked(dataset_copy):
    edit_dataset(dataset_copy, lambda meta: meta["splits"].update({"../cache": meta["splits"].pop("val")}))
    with pytest.raises(DataError, match=r"splits: split name '../cache' is not allowed"):
        DatasetInfo.load(dataset_copy)


def test_a_shard_named_like_a_url_is_read_as_a_file_never_run(dataset_copy, tmp_path, monkeypatch):
    """webdataset runs 'pipe:CMD' URLs in a shell; shard URLs are absolute paths, so such a name is a file."""
    marker = dataset_copy / "PWNED"
    name = "pipe:touch PWNED;.tar"
    shutil.copy(dataset_copy / "val-000000.tar", dataset_copy / name)
    edit_dataset(dataset_copy, lambda meta: meta["splits"]["val"]["shards"][0].update(path=name))
    monkeypatch.chdir(dataset_copy)
    info = DatasetInfo.load(".")
    assert all(Path(url).is_absolute() for url in info.shard_urls("val"))
    from mmfuse.data.loader import read_records

    assert len(list(read_records(info, "val"))) == info.count("val")
    assert not marker.exists()


# ---- run directories ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    config = ModelConfig(modalities=["text", "image"], labels=["a", "b"], **TINY_MODEL)
    return save_checkpoint(create_model_and_task(config)[0], config, tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture
def run_copy(saved_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(saved_run, copy)
    return copy


def tamper(run: Path, edit) -> None:
    edit_json(run / "config.json", edit)


def outside_assets(run: Path, tmp_path: Path) -> str:
    """A working copy of the run's text assets outside the run: loading it would succeed, so only the check stops
    it."""
    shutil.copytree(run / "assets" / "text", tmp_path / "other")
    return str(tmp_path / "other")


TAMPERED = {
    "pretrained": (lambda m, o: m["model"]["encoders"]["image"].update(pretrained=True),
                   r"model.encoders.image.pretrained: a saved run is rebuilt from its own weights"),
    "checkpoint_path": (lambda m, o: m["model"]["encoders"]["image"]["kwargs"].update(checkpoint_path="/etc/x"),
                        r"model.encoders.image.kwargs.checkpoint_path: encoder 'tiny-image' takes no option"),
    "pretrained_kwarg": (lambda m, o: m["model"]["encoders"]["text"]["kwargs"].update(pretrained=True),
                         r"kwargs.pretrained: encoder 'tiny-text' takes no option 'pretrained'"),
    "absolute_asset": (lambda m, o: m["model"]["encoders"]["text"]["kwargs"].update(model=o),
                       r"model.encoders.text.kwargs.model: .* is not a path inside"),
    "dotdot_asset": (lambda m, o: m["model"]["encoders"]["text"]["kwargs"].update(model="../other"),
                     r"model.encoders.text.kwargs.model: '../other' is not a path inside"),
    "path_not_an_asset": (lambda m, o: (m["model"]["encoders"]["text"]["kwargs"].update(model=o),
                                        m["asset_kwargs"].update(text=[])),
                          r"model.encoders.text.kwargs.model: .* only the run's own assets may name a file"),
    "path_in_name": (lambda m, o: (m["model"]["encoders"]["text"].update(name=f"tiny-text:{o}"),
                                   m["model"]["encoders"]["text"]["kwargs"].pop("model")),
                     r"model.encoders.text.kwargs.model: .* is not a path inside"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_run_is_refused_in_one_line(run_copy, tmp_path, case, monkeypatch):
    edit, message = TAMPERED[case]
    other = outside_assets(run_copy, tmp_path)
    tamper(run_copy, lambda meta: edit(meta, other))
    import transformers

    opened = []
    real = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda name, *a, **k: (opened.append(str(name)), real(name, *a, **k))[1])
    with pytest.raises(ConfigError, match=message) as err:
        mmfuse.load(run_copy)
    assert "\n" not in str(err.value) and str(run_copy / "config.json") in str(err.value)
    assert not any(other in name for name in opened)  # the outside copy was never opened


def test_a_tampered_run_through_embed_is_one_line(run_copy, tmp_path, capsys):
    other = outside_assets(run_copy, tmp_path)
    tamper(run_copy, lambda meta: TAMPERED["absolute_asset"][0](meta, other))
    manifest = text_manifest(tmp_path / "items.jsonl", ["train"])
    before = tree(tmp_path)
    assert main(["embed", "--run", str(run_copy), "--manifest", str(manifest), "--image", "", "--audio", "",
                 "--out", str(tmp_path / "emb"), "--no-progress"]) == 2
    assert "is not a path inside" in one_error_line(capsys)
    assert tree(tmp_path) == before


def test_a_checkpoint_name_stays_inside_the_run(run_copy, tmp_path):
    run = tmp_path / "outer"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="is not a checkpoint name inside"):
        mmfuse.load(run, checkpoint="../../run")


def test_a_corrupt_config_json_is_one_line(run_copy):
    (run_copy / "config.json").write_text('{"model": {"modalities": ["text"], "bogus": 1}}')
    with pytest.raises(ConfigError, match=r"config.json is corrupt"):
        load_checkpoint(run_copy)


def test_an_untampered_run_still_loads(run_copy):
    assert mmfuse.load(run_copy).embed([{"text": "an oak toy"}]).shape == (1, TINY_MODEL["dim"])


def test_saved_kwargs_follow_the_builder_signature():
    # named options pass; a weight source is dropped (the run's weights are its model.safetensors)
    assert saved_kwargs("timm-image", {"model": "vit_tiny_patch16_224", "image_size": 32, "checkpoint": "/w.pt"},
                        set(), "w") == {"model": "vit_tiny_patch16_224", "image_size": 32}
    # timm's **kwargs: plain model options pass, file-loading ones and non-plain values never do
    assert saved_kwargs("timm-image", {"drop_path_rate": 0.1, "global_pool": "avg"}, set(), "w") == {
        "drop_path_rate": 0.1, "global_pool": "avg"}
    for key, value in (("pretrained_cfg_overlay", {"file": "/x"}), ("checkpoint_path", "/x"), ("pretrained", True),
                       ("cache_dir", "/x"), ("pretrained_cfg", {"url": "http://x"})):
        with pytest.raises(ConfigError, match=f"w.{key}: encoder 'timm-image' takes no option"):
            saved_kwargs("timm-image", {key: value}, set(), "w")
    with pytest.raises(ConfigError, match="only the run's own assets may name a file"):
        saved_kwargs("timm-image", {"act_layer": {"file": "x"}}, set(), "w")
    with pytest.raises(ConfigError, match="hf-text' takes no option 'trust_remote_code'"):
        saved_kwargs("hf-text", {"trust_remote_code": True}, set(), "w")
    with pytest.raises(ConfigError, match="unknown encoder"):
        saved_kwargs("no-such-encoder", {}, set(), "w")


def test_a_saved_timm_checkpoint_path_is_never_reloaded(tmp_path):
    image = {"name": "timm-image:vit_tiny_patch16_224", "pretrained": False,
             "kwargs": {"image_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}}
    config = ModelConfig(modalities=["image"], labels=["a", "b"], dim=16, encoders={"image": image})
    run = save_checkpoint(create_model_and_task(config)[0], config, tmp_path / "run")
    tamper(run, lambda meta: meta["model"]["encoders"]["image"]["kwargs"].update(checkpoint="/nonexistent/w.pt"))
    model, loaded, _ = load_checkpoint(run)  # the path is dropped: loading it would fail
    assert "checkpoint" not in loaded.encoders["image"].kwargs


def test_inside():
    root = Path("/srv/run")
    assert inside(root, "assets/text") == root / "assets" / "text"
    for bad in ("/etc", "../x", "assets/../../x", "~/x", "", None, "a\x00b"):
        assert inside(root, bad) is None
