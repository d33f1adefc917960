"""The one folder format of every saved component: config.json plus model.safetensors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from dia.saved import CONFIG_NAME, WEIGHTS_NAME, digest, load_component, save_component

KIND = "dia-test-part"
TENSORS = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "on": torch.tensor([True])}


def saved(folder, version=2, config=None, **kwargs):
    save_component(folder, KIND, version, config or {"width": 4}, TENSORS, **kwargs)
    return folder


def test_a_component_round_trips_with_its_version_and_extra_files(tmp_path):
    folder = saved(tmp_path / "part", extra_files={"notes.txt": "hi", "raw.bin": b"\x00\x01"})
    assert sorted(p.name for p in folder.iterdir()) == [
        CONFIG_NAME, WEIGHTS_NAME, "notes.txt", "raw.bin",
    ]  # fmt: skip
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert list(config)[:2] == ["format", "format_version"]
    assert config["format"] == KIND and config["format_version"] == 2
    assert config["weights_digest"] == digest(TENSORS)
    loaded = load_component(folder, KIND, range(1, 3))
    assert loaded.config == {"width": 4} and loaded.version == 2 and loaded.folder == folder
    assert loaded.tensors.keys() == TENSORS.keys()
    assert all(torch.equal(loaded.tensors[k], v) for k, v in TENSORS.items())
    assert (folder / "notes.txt").read_text() == "hi"
    assert (folder / "raw.bin").read_bytes() == b"\x00\x01"


def test_equal_components_save_to_equal_bytes_and_others_to_other_digests(tmp_path):
    saved(tmp_path / "a")
    saved(tmp_path / "b")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = {**TENSORS, "w": TENSORS["w"] + 1}
    assert digest(other) != digest(TENSORS)
    assert digest({"x": TENSORS["w"].view(3, 2)}) != digest({"x": TENSORS["w"]})


def test_the_weights_carry_the_config_so_a_mixed_folder_is_refused(tmp_path):
    saved(tmp_path / "a")
    save_component(tmp_path / "b", KIND, 2, {"width": 4}, {"w": torch.zeros(2, 3)})
    (tmp_path / "b" / WEIGHTS_NAME).replace(tmp_path / "a" / WEIGHTS_NAME)
    with pytest.raises(ValueError, match="come from different saves"):
        load_component(tmp_path / "a", KIND, range(1, 3))


def test_an_edited_config_is_read_as_edited(tmp_path):
    folder = saved(tmp_path / "part")
    config = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "width": 8}))
    assert load_component(folder, KIND, range(1, 3)).config == {"width": 8}


def test_weights_written_without_a_copy_of_the_config_are_read(tmp_path):
    folder = saved(tmp_path / "part")
    save_file(dict(TENSORS), str(folder / WEIGHTS_NAME))
    assert load_component(folder, KIND, range(1, 3)).config == {"width": 4}


def test_earlier_layouts_are_read(tmp_path):
    folder = saved(tmp_path / "part")
    save_file(dict(TENSORS), str(folder / WEIGHTS_NAME))
    config = json.loads((folder / CONFIG_NAME).read_text())
    del config["format"], config["format_version"], config["weights_digest"]
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "version": 1}))
    with pytest.raises(ValueError, match="does not hold a dia test part"):
        load_component(folder, KIND, range(0, 3))
    loaded = load_component(folder, KIND, range(0, 3), old_version_key="version", unnamed=True)
    assert loaded.config == {"width": 4} and loaded.version == 1
    (folder / CONFIG_NAME).write_text(json.dumps(config))  # no version at all: version 0
    assert load_component(folder, KIND, range(0, 3), unnamed=True).version == 0
    with pytest.raises(ValueError, match="lacks format_version"):
        load_component(folder, KIND, range(1, 3), unnamed=True)


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (3, r"was saved by a newer dia \(format_version 3\); this one reads versions 1 to 2"),
        (0, r"config.json: format_version=0; this dia reads versions 1 to 2"),
        (-1, r"config.json: format_version=-1; expected a non-negative integer"),
        ("2", r"config.json: format_version='2'; expected a non-negative integer"),
        (True, r"config.json: format_version=True; expected a non-negative integer"),
    ],
)
def test_a_version_this_dia_does_not_read_is_one_line(tmp_path, version, message):
    folder = saved(tmp_path / "part")
    config = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "format_version": version}))
    with pytest.raises(ValueError, match=message):
        load_component(folder, KIND, range(1, 3))


def test_missing_damaged_and_foreign_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="dia test part file missing: .*config.json"):
        load_component(tmp_path / "nowhere", KIND, range(1, 3))
    folder = saved(tmp_path / "part")
    with pytest.raises(ValueError, match=r"does not hold a dia other \(format='dia-test-part'\)"):
        load_component(folder, "dia-other", range(1, 3))
    (folder / WEIGHTS_NAME).write_bytes(b"not weights")
    with pytest.raises(ValueError, match=f"cannot read {folder / WEIGHTS_NAME}"):
        load_component(folder, KIND, range(1, 3))
    (folder / CONFIG_NAME).write_text("{")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_component(folder, KIND, range(1, 3))


@pytest.mark.parametrize(
    ("config", "extra"),
    [({"format": "x"}, {}), ({"weights_digest": "0"}, {}), ({}, {CONFIG_NAME: "{}"}),
     ({}, {"sub/file": "x"})],
)  # fmt: skip
def test_the_names_the_helper_writes_are_its_own(tmp_path, config, extra):
    with pytest.raises(ValueError, match="written by save_component itself"):
        save_component(tmp_path / "part", KIND, 1, config, TENSORS, extra_files=extra)
    assert not (tmp_path / "part").exists()


def test_a_failed_save_keeps_the_earlier_folder(tmp_path, monkeypatch):
    folder = saved(tmp_path / "part")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dia.saved.save_file", full)
    with pytest.raises(OSError, match="No space"):
        saved(folder, config={"width": 8})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part"]
