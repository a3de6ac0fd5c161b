"""Predictor artifacts: plain files with checksums; a damaged one is one clear error."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from latbench.ops import OpSpec
from latbench.spaces import get_space

pytest.importorskip("lightgbm", reason="predictors need LightGBM: pip install -e . (a latbench dependency)")

from predictors import artifact  # noqa: E402
from predictors.artifact import ArtifactError  # noqa: E402
from predictors.gbdt import GBDTPredictor  # noqa: E402
from predictors.latency import LatencyPredictor  # noqa: E402
from test_predictors import device_table  # noqa: E402

INFO = {"device": "raspi4", "runtime": "imported", "runtime_version": "hwnasbench-raspi4",
        "settings_hash": "0123456789abcdef", "settings": {"source": "hwnasbench-raspi4"},
        "space": "fbnet-imagenet"}


@pytest.fixture(scope="module")
def fitted() -> LatencyPredictor:
    specs, y = device_table("raspi4")
    space = get_space("fbnet-imagenet")
    keep = [i for i, s in enumerate(specs) if i % 4]  # a quarter left to the GBDT
    nets = space.sample_networks(12, seed=5)
    plain = LatencyPredictor(GBDTPredictor(base="blend")).fit([specs[i] for i in keep], y[keep])
    sums = np.array([plain.predict_ops(n.ops).sum() for n in nets])
    return LatencyPredictor(GBDTPredictor(base="blend"), correction="affine").fit(
        [specs[i] for i in keep], y[keep], networks=nets, network_ms=0.9 * sums + 0.5)


@pytest.fixture
def saved(fitted, tmp_path) -> Path:
    return artifact.save(fitted, tmp_path / "raspi4", info=INFO, reports={"report.json": b"{}\n"})


def probe_ops() -> list[OpSpec]:
    rng = random.Random(1)
    ops = get_space("fbnet-imagenet").ops() + get_space("fbnet-cifar").ops()
    ops += [OpSpec("fbnet_block", 8 * rng.randint(1, 40), s, s, 8 * rng.randint(1, 40),
                   kernel=rng.choice([3, 5]), stride=rng.choice([1, 2]), expansion=rng.choice([1, 3, 6]))
            for s in (5, 9, 20, 40, 80) for _ in range(20)]
    return ops


def test_round_trip_gives_the_same_predictions(fitted, saved):
    loaded = artifact.load(saved)
    ops = probe_ops()
    # LightGBM's text model keeps leaf values to the last few ulps, not bit for bit
    np.testing.assert_allclose(loaded.predict_ops(ops), fitted.predict_ops(ops), rtol=1e-12)
    space = get_space("fbnet-imagenet")
    np.testing.assert_allclose(loaded.cost_table(space), fitted.cost_table(space), rtol=1e-12)
    arch = space.sample_arch(random.Random(2))
    assert loaded.predict_network(space, arch) == pytest.approx(fitted.predict_network(space, arch), rel=1e-12)
    assert loaded.has_network_correction and loaded.correction_.form_ == "affine"
    assert loaded.gbdt_.get_params() == fitted.gbdt_.get_params()
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["device"] == "raspi4" and manifest["runtime_version"] == "hwnasbench-raspi4"
    assert manifest["settings"] == INFO["settings"] and manifest["network_correction"] is True
    assert manifest["feature_names"] == list(fitted.gbdt_.feature_names_in_)
    assert {"lightgbm", "numpy", "scipy", "latbench", "python"} <= set(manifest["versions"])
    on_disk = {p.name for p in saved.iterdir()} - {"manifest.json"}
    assert on_disk == set(manifest["files"]) | set(manifest["reports"])
    # plain files only: JSON documents and LightGBM text models
    for name in manifest["files"]:
        text = (saved / name).read_text()
        if name.endswith(".json"):
            json.loads(text)
        else:
            assert name.startswith("gbdt_") and text.startswith("tree")


@pytest.mark.parametrize("change", [{"use_lut": False}, {"correction": "none"}])
def test_an_edited_predictor_block_of_the_manifest_is_refused(fitted, saved, change):
    """No file checksum covers the manifest's own 'predictor' settings, and use_lut=false
    silently answered the measured ops with the GBDT instead of their medians."""
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["predictor"].update(change)
    path.write_text(json.dumps(manifest, indent=1))
    with pytest.raises(ArtifactError, match=r"'predictor' settings differ from their sha256") as info:
        artifact.load(saved, "raspi4")
    message = str(info.value)
    assert str(path) in message and "re-run `latbench fit-predictor --device raspi4`" in message
    assert "\n" not in message


def test_a_manifest_saved_before_the_settings_checksum_still_loads(fitted, saved):
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["predictor"] == {"correction": "affine", "use_lut": True}
    del manifest["predictor_sha256"]  # as every save before it wrote
    path.write_text(json.dumps(manifest, indent=1))
    ops = probe_ops()
    np.testing.assert_allclose(artifact.load(saved).predict_ops(ops), fitted.predict_ops(ops), rtol=1e-12)


def test_a_folder_copied_anywhere_loads_by_its_path(fitted, saved, tmp_path, latbench_home):
    import shutil

    import predictors

    copy = tmp_path / "other machine" / "rpi copy"
    shutil.copytree(saved, copy)
    ops = probe_ops()
    for spec in (copy, str(copy)):
        model = predictors.load(spec)
        np.testing.assert_allclose(model.predict_ops(ops), fitted.predict_ops(ops))
    with pytest.raises(ArtifactError, match="does not exist"):
        predictors.load(tmp_path / "nothing")


def test_a_loaded_predictor_names_its_folder_and_manifest_checksum(saved):
    import hashlib

    info = artifact.load(saved).info_
    assert info["folder"] == str(saved.resolve()) and info["device"] == "raspi4"
    assert info["manifest_sha256"] == hashlib.sha256((saved / "manifest.json").read_bytes()).hexdigest()


def test_the_manifest_checksum_is_of_the_manifest_read_even_if_saved_over_meanwhile(fitted, saved, monkeypatch):
    import hashlib

    from predictors.lut import LUT

    read = hashlib.sha256((saved / "manifest.json").read_bytes()).hexdigest()
    real = LUT.from_dict.__func__

    def saved_over(cls, d):  # a fit-predictor swaps the folder while this load reads it
        artifact.save(fitted, saved, info={**INFO, "runtime_version": "another fit"})
        return real(cls, d)
    monkeypatch.setattr(LUT, "from_dict", classmethod(saved_over))
    info = artifact.load(saved).info_
    assert info["runtime_version"] == INFO["runtime_version"] and info["manifest_sha256"] == read


def test_a_folder_loaded_by_its_path_says_how_to_mend_it_by_its_device(saved, tmp_path, latbench_home):
    import shutil

    import predictors

    with pytest.raises(ArtifactError) as info:  # a path is not a device: no 'fit-predictor --device nothing'
        predictors.load(tmp_path / "nothing")
    assert str(info.value).startswith(f"no latbench predictor in {tmp_path / 'nothing'} (")
    assert "--device nothing" not in str(info.value) and "latbench:DEVICE" in info.value.hint
    copy = tmp_path / "rpi copy"
    shutil.copytree(saved, copy)
    _flip_byte(copy / "lut.json", 10)
    with pytest.raises(ArtifactError, match="lut.json is corrupt") as info:
        predictors.load(copy)
    # the manifest's device, not the copy's folder name; and the fit goes to the home, not here
    assert info.value.hint == (f"re-run `latbench fit-predictor --device raspi4`, then copy "
                               f"{artifact.predictor_dir('raspi4')} to {copy}")


@pytest.mark.parametrize("manifest", [None, "{not json", "[]"])
def test_a_folder_loaded_by_its_path_is_not_taken_for_a_device_without_a_manifest(saved, tmp_path, manifest,
                                                                                  latbench_home):
    """Its name says nothing until a manifest names the device; the same words for
    artifact.load(path) as for predictors.load(path)."""
    import shutil

    import predictors

    copy = tmp_path / "rpi-copy"
    shutil.copytree(saved, copy)
    if manifest is None:
        (copy / "manifest.json").unlink()
    else:
        (copy / "manifest.json").write_text(manifest)
    for load in (artifact.load, predictors.load):
        with pytest.raises(ArtifactError) as info:
            load(copy)
        assert "--device rpi-copy" not in str(info.value) and "--device DEVICE" in info.value.hint
        if manifest is None:
            assert str(info.value).startswith(f"no latbench predictor in {copy} (")
        else:
            assert "manifest.json is " in info.value.message and str(copy) in info.value.hint


def test_a_home_folder_loaded_by_its_path_with_a_corrupt_manifest_names_its_device(saved, latbench_home):
    import shutil

    folder = artifact.predictor_dir("raspi4")
    shutil.copytree(saved, folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError) as info:
        artifact.load(folder)
    assert info.value.hint == "re-run `latbench fit-predictor --device raspi4`"


def test_the_folder_is_readable_by_others_as_the_umask_allows(fitted, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        folder = artifact.save(fitted, tmp_path / "shared", info=INFO)
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 700


def test_saving_again_replaces_the_artifact_whole(fitted, saved):
    (saved / "stray.txt").write_text("left over")
    before = (saved / "manifest.json").read_bytes()
    artifact.save(fitted, saved, info=INFO)
    # even within created_at's second: a load tells the two apart by the manifest's bytes
    assert (saved / "manifest.json").read_bytes() != before
    assert not (saved / "stray.txt").exists()
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]
    artifact.load(saved)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["gbdt_pooled_0.txt", "lut.json", "gbdt.json", "correction.json"])
def test_a_flipped_byte_is_one_clear_error(saved, name):
    _flip_byte(saved / name, (saved / name).stat().st_size // 2)
    with pytest.raises(ArtifactError) as info:
        artifact.load(saved, "raspi4")
    message = str(info.value)
    assert name in message and "corrupt" in message
    assert "re-run `latbench fit-predictor --device raspi4`" in message
    assert "\n" not in message


def test_a_missing_library_is_named_not_blamed_on_the_files(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # as if it were not installed
    with pytest.raises(ArtifactError) as info:
        artifact.load(saved, "raspi4")
    message = str(info.value)
    assert "lightgbm is not installed" in message and "pip install lightgbm" in message
    assert "fit-predictor" not in message  # re-fitting would not help


def test_an_installed_but_incompatible_library_is_not_called_missing(saved, monkeypatch):
    from predictors.gbdt import GBDTPredictor

    def broken(*args, **kwargs):
        raise ImportError("cannot import name 'Booster' from 'lightgbm'", name="lightgbm")
    monkeypatch.setattr(GBDTPredictor, "from_files", broken)
    with pytest.raises(ArtifactError) as info:
        artifact.load(saved, "raspi4")
    assert "cannot import name 'Booster'" in str(info.value) and "not installed" not in str(info.value)


def test_missing_file_and_bad_manifest(saved):
    (saved / "lut.json").unlink()
    with pytest.raises(ArtifactError, match=r"lut\.json is missing.*fit-predictor"):
        artifact.load(saved)
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest\.json is corrupt.*fit-predictor"):
        artifact.load(saved)


def test_a_name_never_fitted_suggests_the_close_one(saved):
    with pytest.raises(ArtifactError, match="no fitted predictor for device 'raspi' ") as err:
        artifact.load(saved.parent / "raspi", "raspi")  # as predictors.load("latbench:raspi") does
    assert "did you mean 'raspi4'?" in err.value.hint and "fitted: raspi4" in err.value.hint


def test_a_folder_copied_under_another_devices_name_is_refused(saved, latbench_home):
    """latbench:pixel2 holding raspi4's predictor: a search would optimise for raspi4 while
    --verify measured pixel2, and the result would name raspi4."""
    import shutil

    shutil.copytree(saved, artifact.predictor_dir("pixel2"))
    with pytest.raises(ArtifactError, match="fitted for device 'raspi4', not 'pixel2'") as err:
        artifact.load(artifact.predictor_dir("pixel2"), "pixel2")
    assert "latbench:raspi4" in err.value.hint and "--device pixel2" in err.value.hint
    assert artifact.load(artifact.predictor_dir("pixel2")).info_["device"] == "raspi4"  # by path: any name


def test_a_deeply_nested_manifest_is_corrupt_not_a_recursion_error(saved):
    (saved / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="manifest.json is corrupt"):
        artifact.load(saved)


@pytest.mark.parametrize("entry, match", [
    ({"bogus": None}, "bogus"),
    ({"median_ms": float("nan")}, "not a finite number >= 0 ms"),
    ({"median_ms": -1.0}, "not a finite number >= 0 ms"),
])
def test_a_lut_edited_with_its_checksum_updated_is_checked_as_it_loads(saved, entry, match):
    path = saved / "lut.json"
    lut = json.loads(path.read_text())
    key = next(iter(lut["entries"]))
    if "bogus" in entry:
        lut["entries"]["bogus"] = lut["entries"][key]
    else:
        lut["entries"][key].update(entry)
    path.write_text(json.dumps(lut))
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"]["lut.json"] = artifact._sha256(path.read_bytes())
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"cannot read lut.json .*{match}"):
        artifact.load(saved)


@pytest.mark.parametrize("change, match", [
    ({"format_version": 99}, "format version 99; this latbench reads version 1"),
    ({"feature_names": ["cin", "h"]}, "feature list differs"),
    ({"versions": {"lightgbm": "999.0.0"}}, "written with LightGBM 999.0.0"),
    ({"format": "something-else"}, "not a latbench predictor manifest"),
])
def test_incompatible_manifest_is_one_clear_error(saved, change, match):
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(change)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=match) as info:
        artifact.load(saved)
    assert "fit-predictor" in str(info.value)


def test_a_model_file_whose_checksum_was_updated_still_fails_clearly(saved):
    # Someone "fixes" the checksum of a broken model by hand: the text itself is checked.
    path = saved / "gbdt_pooled_0.txt"
    path.write_text("tree\nnot a model\n")
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"][path.name] = artifact._sha256(path.read_bytes())
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="cannot read the gbdt_.*txt models.*not a LightGBM text "
                                            "model.*fit-predictor"):
        artifact.load(saved)
    # LightGBM would print "[LightGBM] [Fatal] ..." on the C stdout (seen only at exit) first.
    code = f"from predictors import artifact\ntry: artifact.load({str(saved)!r})\nexcept Exception: pass\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "[LightGBM]" not in done.stdout + done.stderr


@pytest.mark.parametrize("cut", ["half", "one_tree"])
def test_a_cut_short_model_whose_checksum_was_updated_does_not_abort_python(saved, cut):
    # LightGBM cuts a model's trees out by the sizes in its header, in threads: a shorter text
    # makes it abort the whole process ("terminate called ..."), so load checks the sizes first.
    path = saved / "gbdt_pooled_0.txt"
    text = path.read_text()
    if cut == "half":
        text = text[:len(text) // 2]
    else:  # drop the second tree: "end of trees" is still there, the sizes no longer add up
        start = text.index("\nTree=1\n") + 1
        text = text[:start] + text[text.index("\nTree=2\n") + 1:]
    path.write_text(text)
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["files"][path.name] = artifact._sha256(path.read_bytes())
    (saved / "manifest.json").write_text(json.dumps(manifest))
    code = (f"from predictors import artifact\ntry: artifact.load({str(saved)!r})\n"
            "except artifact.ArtifactError as exc: print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cannot read the gbdt_*.txt models" in done.stdout and "[LightGBM]" not in done.stdout + done.stderr


def test_the_model_header_check_takes_what_lightgbm_loads(saved):
    import lightgbm as lgb

    from predictors.gbdt import _model_text

    text = (saved / "gbdt_pooled_0.txt").read_text()
    older = "".join(line for line in text.splitlines(keepends=True)
                    if not line.startswith("num_tree_per_iteration="))  # LightGBM defaults it
    lgb.Booster(model_str=_model_text("m.txt", older))
    with pytest.raises(ValueError, match="no 'label_index' line"):
        _model_text("m.txt", text.replace("label_index=", "label=", 1))


def test_loading_a_fitted_predictor_needs_no_torch(saved, tmp_path):
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from predictors import artifact\n"
            "from latbench.spaces import get_space\n"
            f"p = artifact.load(Path({str(saved)!r}))\n"
            "t = p.cost_table(get_space('fbnet-cifar'))\n"
            "assert t.shape == (22, 9) and (t > 0).sum() >= 22 * 8\n"
            "bad = [m for m in ('torch', 'onnxruntime') if m in sys.modules]\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr


def test_an_arch_without_its_space_or_a_non_space_is_a_clear_type_error(fitted):
    with pytest.raises(TypeError, match=r"give its space too, predict_network\(space, arch\)"):
        fitted.predict_network([0] * 22)
    with pytest.raises(TypeError, match="expected a search space or its name.*got int"):
        fitted.cost_table(3)


@pytest.mark.parametrize("field, value, match", [
    ("versions", None, "its 'versions' is not a table of library versions"),
    ("versions", [], "its 'versions' is not a table of library versions"),
    ("versions", {"lightgbm": 5}, "its 'versions' is not a table of library versions"),
    ("feature_set", ["derived"], "its 'feature_set' is not the name of a feature set"),
    ("feature_set", None, "its 'feature_set' is not the name of a feature set"),
    ("feature_names", None, "its 'feature_names' is not a list of feature names"),
    ("feature_names", "cin", "its 'feature_names' is not a list of feature names"),
    ("feature_names", [1, 2], "its 'feature_names' is not a list of feature names"),
    ("files", None, "lists no files"),
    ("files", ["lut.json"], "lists no files"),
    ("files", {"lut.json": 5}, "its 'files' entry for lut.json is not a sha256"),
    ("files", {"lut.json": None}, "its 'files' entry for lut.json is not a sha256"),
    ("files", {"lut.json": "abc"}, "its 'files' entry for lut.json is not a sha256"),
    ("files", {"": "0" * 64}, "names a file outside its folder: ''"),
    ("files", {"report.json": "0" * 64}, "its 'files' does not list lut.json"),
    ("predictor", None, "its 'predictor' is not a table of predictor settings"),
    ("predictor", {"correction": ["affine"], "use_lut": True}, "its 'predictor' is not a table"),
    ("predictor", {"correction": "affine", "use_lut": "yes"}, "its 'predictor' is not a table"),
    ("format_version", True, "format version True"),
    ("predictor_sha256", "abc", "its 'predictor_sha256' is not a sha256"),
    ("predictor_sha256", 5, "its 'predictor_sha256' is not a sha256"),
    ("files", {"lut\0.json": "0" * 64}, "names a file outside its folder"),  # was a ValueError
])
def test_a_malformed_manifest_field_is_one_clear_error(saved, field, value, match):
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())
    if field == "files" and isinstance(value, dict) and "lut.json" in value:
        value = {**manifest["files"], **value}  # only that entry is wrong
    manifest[field] = value
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=match) as info:
        artifact.load(saved, "raspi4")
    message = str(info.value)
    assert str(path) in message and "re-run `latbench fit-predictor --device raspi4`" in message
    assert "\n" not in message


def test_a_load_overlapping_saves_gets_the_old_or_the_new_predictor(fitted, saved):
    """A fit-predictor saving the folder while a load reads it: no half-and-half, no 'missing'."""
    import copy
    import threading
    import time

    plain = copy.copy(fitted)  # other files (correction.json) and another manifest
    plain.correction, plain.correction_ = "none", None
    space = get_space("fbnet-imagenet")
    arch = space.sample_arch(random.Random(2))
    expected = {"with": fitted.predict_network(space, arch), "without": plain.predict_network(space, arch)}
    assert expected["with"] != pytest.approx(expected["without"], rel=1e-9)
    artifact.save(fitted, saved, info={**INFO, "runtime_version": "with"})
    stop, saves = threading.Event(), [0]
    switch = sys.getswitchinterval()

    def saver():
        while not stop.is_set():
            for tag, predictor in (("with", fitted), ("without", plain)):
                artifact.save(predictor, saved, info={**INFO, "runtime_version": tag})
                saves[0] += 1
    thread = threading.Thread(target=saver, daemon=True)
    failures, loads = [], 0
    # 5 s, or up to 30 s until 50 loads: on a loaded host the saver took the GIL for most of 5 s
    soon, latest = time.monotonic() + 5, time.monotonic() + 30
    sys.setswitchinterval(1e-5)  # the threads take turns often: many loads overlap a save
    try:
        thread.start()
        while loads < 150 and (time.monotonic() < soon or (loads < 50 and time.monotonic() < latest)):
            try:
                loaded = artifact.load(saved, "raspi4")
            except ArtifactError as exc:
                failures.append(str(exc))
            else:
                tag = loaded.info_["runtime_version"]
                assert loaded.has_network_correction == (tag == "with")
                assert loaded.predict_network(space, arch) == pytest.approx(expected[tag], rel=1e-12)
            loads += 1
    finally:
        stop.set()
        thread.join(30)
        sys.setswitchinterval(switch)
    assert loads >= 50 and saves[0] >= 20, (loads, saves[0])
    assert not failures, f"{len(failures)} of {loads} loads failed: {failures[:3]}"


def test_a_load_between_the_two_renames_of_a_save_waits_for_the_new_folder(saved):
    """save() renames the old folder away, then the new one in: no 'no fitted predictor' between."""
    import threading

    away = saved.with_name(f".{saved.name}-old-1")
    saved.rename(away)
    timer = threading.Timer(0.05, away.rename, [saved])
    timer.start()
    try:
        assert artifact.load(saved, "raspi4").info_["device"] == "raspi4"
    finally:
        timer.join()
    # a folder left by a save that died, and none running: still not fitted (after a few tries)
    stale = saved.with_name(f".{saved.name}-0123456789ab")
    stale.mkdir()
    saved.rename(saved.with_name("elsewhere"))
    with pytest.raises(ArtifactError, match="no fitted predictor for device 'raspi4'"):
        artifact.load(saved, "raspi4")
