import h5py
import numpy as np
import pytest

from tag2mask import masks as mask_rle
from tag2mask.errors import InputError
from tag2mask.store import StoreReader, StoreWriter, gather


def _random_masks(rng, n, h, w):
    return rng.random((n, h, w)) > 0.7


def test_round_trip_arrays_strings_and_attrs(tmp_path):
    rng = np.random.default_rng(0)
    m = _random_masks(rng, 3, 20, 30)
    path = tmp_path / "s.h5"
    with StoreWriter(path, "pseudo_masks", ["cat", "dog"], config_digest="abc") as w:
        w.add("a/b%c", 20, 30, {"masks": mask_rle.encode(m), "labels": np.array([0, 1, 1], np.int16),
                                "big": np.zeros((100, 100), np.float32)}, attrs={"num_peaks": 3})
        w.add("empty", 20, 30, {"masks": [], "labels": np.zeros(0, np.int16)})
    with StoreReader(path, "pseudo_masks") as r:
        assert r.class_names == ["cat", "dog"]
        assert r.attrs["config_digest"] == "abc"
        assert set(r.image_ids) == {"a/b%c", "empty"}
        e = r.read("a/b%c")
        assert e["num_peaks"] == 3 and e["height"] == 20 and e["width"] == 30
        np.testing.assert_array_equal(mask_rle.decode(e["masks"], 20, 30), m)
        assert e["labels"].dtype == np.int16
        assert r.read("empty")["masks"] == []
    with h5py.File(path) as f:  # large arrays are compressed
        assert f["images"]["a%2Fb%25c"]["big"].compression == "gzip"


def test_killed_writer_leaves_no_store(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError):
        with StoreWriter(path, "peaks", ["a"]) as w:
            w.add("x", 4, 4, {"v": np.zeros(3)})
            raise RuntimeError("killed")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_reader_checks_kind_and_format(tmp_path):
    path = tmp_path / "s.h5"
    with StoreWriter(path, "peaks", ["a"]):
        pass
    with pytest.raises(InputError, match="expected a 'proposals' store"):
        StoreReader(path, "proposals")
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(InputError, match="bad.h5"):
        StoreReader(tmp_path / "bad.h5")
    with pytest.raises(InputError, match="not found"):
        StoreReader(tmp_path / "missing.h5")


def test_gather_joins_shards_and_rejects_mismatch(tmp_path):
    for i in range(3):
        with StoreWriter(tmp_path / f"{i}.h5", "peaks", ["a"], config_digest="d") as w:
            w.add(f"img{i}", 2, 2, {"v": np.full(2, i)})
    gather([tmp_path / f"{i}.h5" for i in range(3)], tmp_path / "all.h5")
    with StoreReader(tmp_path / "all.h5", "peaks") as r:
        assert sorted(r.image_ids) == ["img0", "img1", "img2"]
        assert r.read("img2")["v"].tolist() == [2, 2]
    with StoreWriter(tmp_path / "other.h5", "peaks", ["a"], config_digest="e") as w:
        w.add("img9", 2, 2, {"v": np.zeros(2)})
    with pytest.raises(InputError, match="config_digest"):
        gather([tmp_path / "0.h5", tmp_path / "other.h5"], tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()


def test_masks_are_stored_compactly(tmp_path):
    m = np.zeros((5, 300, 400), bool)
    m[:, 50:200, 60:300] = True
    path = tmp_path / "s.h5"
    with StoreWriter(path, "proposals", ["a"]) as w:
        w.add("x", 300, 400, {"masks": mask_rle.encode(m)})
    assert path.stat().st_size < m.size / 8  # smaller than even a bit-packed copy


def test_rle_boxes_and_area():
    m = np.zeros((2, 10, 12), bool)
    m[0, 2:5, 3:9] = True
    counts = mask_rle.encode(m)
    np.testing.assert_array_equal(mask_rle.boxes(counts, 10, 12), [[3, 2, 9, 5], [0, 0, 0, 0]])
    np.testing.assert_array_equal(mask_rle.area(counts, 10, 12), [18, 0])


def test_outputs_get_the_usual_permissions(tmp_path):
    import os
    from tag2mask.atomic import write_json
    write_json(tmp_path / "x.json", {})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask
