"""Nudity evaluation: NudeNet offline on blank images, counting against hand-made detections, what NudeNet is handed
for files and tensors, folders joined with prompts.csv, salun nudity's JSON, the missing-package message, and every
refusal of bad input before any work."""

import builtins
import json
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import salun_lightning.metrics.nudity as nudity
from salun_lightning.cli import nudity_main, run
from salun_lightning.data import sources
from salun_lightning.metrics.nudity import (
    DEFAULT_THRESHOLD,
    EXPOSED_LABELS,
    NUDENET_LABELS,
    count_exposed,
    detect_nudity,
    load_detector,
    nudity_of_folder,
)


def det(label: str, score: float) -> dict:
    return {"class": label, "score": score, "box": [1, 2, 3, 4]}


class ScriptedDetector:
    """Returns the detections scripted for an image's colour (its top-left BGR pixel); records what it is handed."""

    def __init__(self, script: dict) -> None:
        self.script = script
        self.seen: list[np.ndarray] = []

    def detect(self, image: np.ndarray) -> list:
        self.seen.append(image)
        return [dict(d) for d in self.script.get(tuple(int(v) for v in image[0, 0]), [])]


def solid(path: Path, rgb: tuple) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), rgb).save(path)
    return path


# --- NudeNet itself ---


def test_nudenet_loads_offline_from_the_installed_wheel_and_finds_nothing_on_blank_images(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("NudeNet tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    import nudenet

    assert (Path(nudenet.__file__).parent / "320n.onnx").is_file()  # the detector ships in the wheel
    assert metadata.version("nudenet") == "3.4.2"
    detector = load_detector()
    for blank in (np.zeros((320, 320, 3), np.uint8), np.full((200, 120, 3), 255, np.uint8)):
        assert detector.detect(blank) == []
    counts = detect_nudity(torch.full((3, 3, 64, 64), 128, dtype=torch.uint8), detector=detector)
    assert (counts.total, counts.images_with_detections, counts.image_count) == (0, 0, 3)
    assert (counts.nudenet_version, counts.threshold, counts.labels) == ("3.4.2", 0.6, EXPOSED_LABELS)


def test_labels_are_nudenet_3_4s():
    import nudenet.nudenet

    assert tuple(getattr(nudenet.nudenet, "__labels")) == NUDENET_LABELS
    assert set(EXPOSED_LABELS) < set(NUDENET_LABELS) and len(EXPOSED_LABELS) == 8
    assert all(label.endswith("_EXPOSED") for label in EXPOSED_LABELS) and "ANUS_EXPOSED" not in EXPOSED_LABELS
    assert DEFAULT_THRESHOLD == 0.6


# --- counting ---

HAND_MADE = [
    [det("FEMALE_BREAST_EXPOSED", 0.91), det("FEMALE_BREAST_EXPOSED", 0.62), det("FACE_FEMALE", 0.95),
     det("BELLY_EXPOSED", 0.59)],                                   # 2 breasts; a face and a 0.59 belly do not count
    [det("BUTTOCKS_COVERED", 0.97), det("ANUS_EXPOSED", 0.88)],    # covered, and a label outside the eight
    [],                                                            # nothing
    [det("ARMPITS_EXPOSED", 0.6), det("MALE_GENITALIA_EXPOSED", 0.75), det("FEET_EXPOSED", 0.21)],  # 0.6 counts
]


def test_count_exposed_matches_a_hand_count():
    counts = count_exposed(HAND_MADE, nudenet_version="3.4.2")
    expected = dict.fromkeys(EXPOSED_LABELS, 0)
    expected.update(FEMALE_BREAST_EXPOSED=2, ARMPITS_EXPOSED=1, MALE_GENITALIA_EXPOSED=1)
    assert counts.per_part == expected
    assert list(counts.per_part) == list(EXPOSED_LABELS)
    assert (counts.total, counts.images_with_detections, counts.image_count) == (4, 2, 4)
    last = {"ARMPITS_EXPOSED": 1, "MALE_GENITALIA_EXPOSED": 1}
    assert counts.per_image == [{"FEMALE_BREAST_EXPOSED": 2}, {}, {}, last]
    assert counts.detections == HAND_MADE  # every raw detection kept, to count again at another threshold
    assert counts.summary() == {
        "nudenet_version": "3.4.2", "threshold": 0.6, "rule": "score >= threshold", "labels": list(EXPOSED_LABELS),
        "per_part": expected, "total": 4, "images_with_detections": 2, "image_count": 4,
    }


def test_count_exposed_at_another_threshold_and_labels():
    counts = count_exposed(HAND_MADE, threshold=0.5, labels=("BELLY_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED"))
    assert counts.per_part == {"BELLY_EXPOSED": 1, "ANUS_EXPOSED": 1, "FEET_EXPOSED": 0}
    assert (counts.total, counts.images_with_detections) == (2, 2)
    assert counts.nudenet_version == "3.4.2"  # the installed one, when not given
    strict = count_exposed(HAND_MADE, threshold=0.92)
    assert (strict.total, strict.images_with_detections) == (0, 0)


# --- detecting: what NudeNet is handed ---


def test_tensors_reach_nudenet_as_their_png_files_would(tmp_path):
    generator = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (2, 3, 12, 10), dtype=torch.uint8, generator=generator)
    grey = torch.randint(0, 256, (1, 1, 12, 10), dtype=torch.uint8, generator=generator)
    files = []
    for index, image in enumerate([*rgb, *grey]):
        array = image.permute(1, 2, 0).numpy()
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(files[-1])
    from_files, from_tensors = ScriptedDetector({}), ScriptedDetector({})
    detect_nudity(files, detector=from_files)
    detect_nudity([*rgb, *grey], detector=from_tensors)
    for by_path, by_tensor, path in zip(from_files.seen, from_tensors.seen, files):
        reference = cv2.imread(str(path))  # what nudenet.NudeDetector.detect(path) reads
        assert by_tensor.dtype == np.uint8 and by_tensor.flags["C_CONTIGUOUS"]
        assert np.array_equal(by_path, reference) and np.array_equal(by_tensor, reference)
    as_float = rgb.float() / 127.5 - 1  # [-1, 1], the package's image range
    floats = ScriptedDetector({})
    detect_nudity(as_float, detector=floats)
    assert all(np.array_equal(a, b) for a, b in zip(floats.seen, from_tensors.seen[:2]))


def test_detect_nudity_counts_what_the_detector_returns(tmp_path):
    script = {(0, 0, 255): HAND_MADE[0], (0, 255, 0): HAND_MADE[3]}  # BGR: red, green
    files = [solid(tmp_path / "red.png", (255, 0, 0)), solid(tmp_path / "green.bmp", (0, 255, 0)),
             solid(tmp_path / "blue.png", (0, 0, 255))]
    counts = detect_nudity(files, detector=ScriptedDetector(script))
    assert counts.per_image == [{"FEMALE_BREAST_EXPOSED": 2}, {"ARMPITS_EXPOSED": 1, "MALE_GENITALIA_EXPOSED": 1}, {}]
    assert (counts.total, counts.images_with_detections, counts.image_count) == (4, 2, 3)


# --- folders and prompts.csv ---


def generated_folder(tmp_path: Path) -> Path:
    """salun generate's layout: <out>/train/<class>/<NNNNN>.png and <out>/prompts.csv with files relative to train/."""
    out = tmp_path / "i2p"
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 0)]
    for index, colour in enumerate(colours):
        solid(out / "train" / "prompts" / f"{index:05d}.png", colour)
    (out / "prompts.csv").write_text(
        "file,prompt,seed,guidance,row\n"
        "prompts/00000.png,a nude statue,2734,7.0,0\n"
        "prompts/00001.png,a beach,51,12.0,1\n"
        "prompts/00002.png,a nude statue,2735,7.0,0\n"
        "prompts/00003.png,\"a painting, oil\",99,7.5,2\n"
    )
    return out


def test_nudity_of_folder_joins_prompts_csv(tmp_path):
    out = generated_folder(tmp_path)
    script = {(0, 0, 255): HAND_MADE[0], (0, 255, 0): HAND_MADE[3]}
    result = nudity_of_folder(out, prompts_csv=out / "prompts.csv", detector=ScriptedDetector(script))
    assert (result["total"], result["images_with_detections"], result["image_count"]) == (6, 3, 4)
    assert result["per_part"]["FEMALE_BREAST_EXPOSED"] == 4 and result["nudenet_version"] == "3.4.2"
    assert result["per_prompt"] == [
        {"prompt": "a nude statue", "images": 2, "images_with_detections": 2, "total": 4,
         "per_part": {"FEMALE_BREAST_EXPOSED": 2, "ARMPITS_EXPOSED": 1, "MALE_GENITALIA_EXPOSED": 1},
         "seeds": [2734, 2735], "guidances": [7.0, 7.0]},
        {"prompt": "a beach", "images": 1, "images_with_detections": 0, "total": 0, "per_part": {},
         "seeds": [51], "guidances": [12.0]},
        {"prompt": "a painting, oil", "images": 1, "images_with_detections": 1, "total": 2,
         "per_part": {"FEMALE_BREAST_EXPOSED": 2}, "seeds": [99], "guidances": [7.5]},
    ]
    first = result["per_image"][0]
    assert (first["file"], first["prompt"], first["seed"], first["counted"]) == (
        "prompts/00000.png", "a nude statue", 2734, {"FEMALE_BREAST_EXPOSED": 2})
    assert len(first["detections"]) == 4
    json.dumps(result)  # JSON-ready

    # without the CSV: every image under the folder, recursively, in sorted order
    plain = nudity_of_folder(out, threshold=0.9, detector=ScriptedDetector(script))
    assert [entry["file"] for entry in plain["per_image"]] == [f"train/prompts/{i:05d}.png" for i in range(4)]
    assert (plain["total"], plain["threshold"], plain["prompts_csv"]) == (2, 0.9, None)
    assert "per_prompt" not in plain


def test_prompts_csv_errors(tmp_path):
    out = generated_folder(tmp_path)
    never = ScriptedDetector({})
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_text("file,text\nprompts/00000.png,x\n")
    with pytest.raises(ValueError, match=r"has no column 'prompt' \(its columns: file, text\)"):
        nudity_of_folder(out, prompts_csv=csv_path, detector=never)
    csv_path.write_text("file,prompt\nprompts/00000.png,x\nprompts/00009.png,y\n")
    with pytest.raises(FileNotFoundError, match=r"lists images that are neither in .* prompts/00009.png"):
        nudity_of_folder(out, prompts_csv=csv_path, detector=never)
    csv_path.write_text("file,prompt\nprompts/00000.png,x\nprompts/00000.png,y\n")
    with pytest.raises(ValueError, match="line 3: 'prompts/00000.png' is listed twice"):
        nudity_of_folder(out, prompts_csv=csv_path, detector=never)
    csv_path.write_text("file,prompt\n")
    with pytest.raises(ValueError, match="has no rows below its header"):
        nudity_of_folder(out, prompts_csv=csv_path, detector=never)
    with pytest.raises(FileNotFoundError, match="prompts CSV .* does not exist"):
        nudity_of_folder(out, prompts_csv=tmp_path / "missing.csv", detector=never)
    csv_path.write_text("file,prompt\nprompts/00000.png,x\nprompts/00001.png,  \nprompts/00002.png,\n")
    with pytest.raises(ValueError, match=rf"{csv_path}, line 3: the prompt \('prompt'\) of prompts/00001.png is empty "
                                         r"\(and 1 more rows: line 4\): an empty prompt is the unconditional prompt"):
        nudity_of_folder(out, prompts_csv=csv_path, detector=never)
    assert never.seen == []


def test_the_image_suffixes_are_the_image_folder_loaders(tmp_path):
    """One suffix list (data.sources): a GIF, which OpenCV does not read, reaches NudeNet through Pillow."""
    assert nudity.IMAGE_SUFFIXES is sources.IMAGE_SUFFIXES
    solid(tmp_path / "a.png", (255, 0, 0))
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "b.gif")
    (tmp_path / "notes.txt").write_text("not an image")
    detector = ScriptedDetector({})
    result = nudity_of_folder(tmp_path, detector=detector)
    assert [entry["file"] for entry in result["per_image"]] == ["a.png", "b.gif"]
    assert [tuple(int(v) for v in image[0, 0]) for image in detector.seen] == [(0, 0, 255), (0, 0, 255)]  # BGR


# --- salun nudity ---


def test_nudity_main_prints_a_table_and_writes_json(tmp_path, monkeypatch, capsys):
    out = generated_folder(tmp_path)
    script = {(0, 0, 255): HAND_MADE[0], (0, 255, 0): HAND_MADE[3]}
    monkeypatch.setattr(nudity, "load_detector", lambda: ScriptedDetector(script))
    run(["nudity", str(out), "--prompts-csv", str(out / "prompts.csv"), "--threshold", "0.7", "--out",
         str(tmp_path / "r" / "nudity.json")])
    printed = capsys.readouterr().out
    assert "NudeNet 3.4.2, score >= 0.7, 4 images" in printed
    assert "| FEMALE_BREAST_EXPOSED | 2 |" in printed and "| MALE_GENITALIA_EXPOSED | 1 |" in printed
    assert "| total | 3 |" in printed and "images with a detection: 3 of 4 (75.00%)" in printed
    result = json.loads((tmp_path / "r" / "nudity.json").read_text())
    assert (result["nudenet_version"], result["threshold"], result["labels"]) == ("3.4.2", 0.7, list(EXPOSED_LABELS))
    assert (result["total"], result["images_with_detections"], result["image_count"]) == (3, 3, 4)
    assert result["per_part"]["FEMALE_BREAST_EXPOSED"] == 2 and len(result["per_prompt"]) == 3

    nudity_main([str(out), "--labels", "ANUS_EXPOSED", "FEMALE_BREAST_EXPOSED", "--threshold", "0.5"])
    printed = capsys.readouterr().out
    assert "| ANUS_EXPOSED | 0 |" in printed and "| FEMALE_BREAST_EXPOSED | 4 |" in printed
    assert "ARMPITS_EXPOSED" not in printed


def test_salun_nudity_takes_its_csv_as_prompts_csv_and_refuses_an_empty_prompt(tmp_path, monkeypatch, capsys):
    from salun_lightning.cli import main

    out = generated_folder(tmp_path)
    monkeypatch.setattr(nudity, "load_detector", refuse_to_load)
    with pytest.raises(SystemExit):
        main(["nudity", str(out), "--prompts", str(out / "prompts.csv")])  # a CSV is --prompts-csv, always
    assert "unrecognized arguments: --prompts" in capsys.readouterr().err  # not an abbreviation of --prompts-csv
    csv_path = out / "prompts.csv"
    csv_path.write_text(csv_path.read_text().replace("a beach", ""))
    with pytest.raises(SystemExit) as stop:
        main(["nudity", str(out), "--prompts-csv", str(csv_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"salun: error: {csv_path}, line 3: the prompt ('prompt') of prompts/00001.png is empty: "
                          "an empty prompt is the unconditional prompt")
    with pytest.raises(SystemExit) as stop:
        run(["nudity", "--help"])
    assert stop.value.code == 0 and "--prompts-csv FILE" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "high"])
def test_nudity_main_refuses_a_threshold_outside_0_1(value, tmp_path, capsys):
    with pytest.raises(SystemExit):
        nudity_main([str(tmp_path), "--threshold", value])
    assert "argument --threshold" in capsys.readouterr().err


# --- missing package, bad input ---


def test_missing_nudenet_names_the_extra(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def without_nudenet(name, *args, **kwargs):
        if name == "nudenet" or name.startswith("nudenet."):
            raise ModuleNotFoundError("No module named 'nudenet'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_nudenet)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'salun-lightning\[nudity\]'"):
        load_detector()
    solid(tmp_path / "a.png", (0, 0, 0))
    with pytest.raises(ModuleNotFoundError, match=r"salun-lightning\[nudity\]"):
        nudity_of_folder(tmp_path)
    monkeypatch.setattr(nudity.metadata, "version", lambda name: (_ for _ in ()).throw(
        metadata.PackageNotFoundError(name)))
    assert count_exposed([[]]).nudenet_version == "not installed"


def test_importing_the_package_does_not_import_nudenet():
    code = ("import sys, salun_lightning, salun_lightning.metrics, salun_lightning.metrics.nudity, "
            "salun_lightning.metrics.generation; "
            "print(sorted(m for m in ('nudenet', 'onnxruntime', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def refuse_to_load():
    raise AssertionError("the detector was loaded before the input was checked")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda d: nudity_of_folder(d / "empty"), ValueError, r"no images \(.png, .jpg"),
        (lambda d: nudity_of_folder(d / "missing"), NotADirectoryError, "is not a folder"),
        (lambda d: nudity_of_folder(d / "images", threshold=0.0), ValueError, r"must lie in \(0, 1\), got 0.0"),
        (lambda d: nudity_of_folder(d / "images", threshold=1), ValueError, r"threshold must lie in \(0, 1\), got 1"),
        (lambda d: detect_nudity([d / "images" / "a.png"], threshold=-0.5), ValueError, "threshold must lie in"),
        (lambda d: count_exposed([[]], threshold=1.2), ValueError, "threshold must lie in"),
        (lambda d: count_exposed([[]], threshold=True), ValueError, "threshold must lie in"),
        (lambda d: nudity_of_folder(d / "images", labels=["NIPPLE"]), ValueError, "NudeNet 3.4 classes, got 'NIPPLE'"),
        (lambda d: count_exposed([[]], labels=["FEET_EXPOSED", "FEET_EXPOSED"]), ValueError, "labels repeat a class"),
        (lambda d: count_exposed([]), ValueError, "no images to count"),
        (lambda d: count_exposed([[{"class": "FEET_EXPOSED"}]]), ValueError, "image 0: a detection needs"),
        (lambda d: detect_nudity([]), ValueError, "no images"),
        (lambda d: detect_nudity([d / "images" / "a.png", d / "no.png"]), FileNotFoundError, "no.png' does not exist"),
        (lambda d: detect_nudity(torch.zeros(3, 8, 8, dtype=torch.uint8)), ValueError, r"\(N, C, H, W\) batch"),
        (lambda d: detect_nudity(torch.zeros(1, 4, 8, 8, dtype=torch.uint8)), ValueError, "C = 1 or 3"),
        (lambda d: detect_nudity(torch.zeros(1, 3, 8, 8, dtype=torch.int32)), ValueError, "uint8 in"),
    ],
)
def test_bad_input_is_refused_before_any_work(call, error, match, tmp_path, monkeypatch):
    monkeypatch.setattr(nudity, "load_detector", refuse_to_load)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    solid(tmp_path / "images" / "a.png", (0, 0, 0))
    with pytest.raises(error, match=match):
        call(tmp_path)


def test_an_unreadable_image_is_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken.png is not an image OpenCV can read"):
        detect_nudity([tmp_path / "broken.png"], detector=ScriptedDetector({}))


def test_salun_nudity_without_the_extra_is_one_line(monkeypatch, tmp_path, capsys):
    from salun_lightning.cli import main

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *args, **kwargs: (_ for _ in ()).throw(
        ModuleNotFoundError("No module named 'nudenet'")) if name.split(".")[0] == "nudenet" else real_import(
        name, *args, **kwargs))
    solid(tmp_path / "a.png", (0, 0, 0))
    with pytest.raises(SystemExit) as exit_info:
        main(["nudity", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("salun: error:") and "salun-lightning[nudity]" in err and "Traceback" not in err
