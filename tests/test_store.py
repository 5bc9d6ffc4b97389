import h5py
import numpy as np
import pytest

from tag2mask.core import masks as mask_rle
from tag2mask.core.errors import InputError
from tag2mask.core.store import StoreReader, StoreWriter, gather


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
    with pytest.raises(RuntimeError), StoreWriter(path, "peaks", ["a"]) as w:
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


def test_bounded_metadata_cache_changes_no_value(tmp_path, monkeypatch):
    """Stores are opened with a small metadata cache (memory flat in the number of images);
    a gather made with HDF5's default cache holds the same images, arrays and attrs."""
    from tag2mask.core import store

    rng = np.random.default_rng(0)
    for s in range(2):
        with StoreWriter(tmp_path / f"{s}.h5", "pseudo_masks", ["a", "b"], config_digest="d",
                         attrs={"count_instances": 3}) as w:
            for i in range(s, 300, 2):
                w.add(f"im/{i}", 40, 50, {"masks": mask_rle.encode(_random_masks(rng, 2, 40, 50)),
                                          "labels": rng.integers(0, 2, 2),
                                          "scores": rng.random(2, np.float32)})
    shards = [tmp_path / "0.h5", tmp_path / "1.h5"]
    gather(shards, tmp_path / "bounded.h5")
    with StoreReader(tmp_path / "bounded.h5") as r:
        assert r.file.id.get_mdc_config().max_size == store._MDC_MAX_BYTES
    monkeypatch.setattr(store, "_bound_metadata_cache", lambda f: f)
    gather(shards, tmp_path / "default.h5")
    with StoreReader(tmp_path / "default.h5") as r:
        assert r.file.id.get_mdc_config().max_size > store._MDC_MAX_BYTES
    monkeypatch.undo()
    bounded, default = _read_everything(tmp_path / "bounded.h5"), _read_everything(
        tmp_path / "default.h5")
    assert len(bounded[1]) == 300 and bounded[0]["count_instances"] == 6
    assert _same(bounded, default)


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

    from tag2mask.core.atomic import write_json
    write_json(tmp_path / "x.json", {})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask


def _ellipses(rng, n, h, w):
    """n filled ellipses: masks whose RLE is as long as real instance masks'."""
    yy, xx = np.mgrid[0:h, 0:w]
    c = rng.uniform((0, 0), (h, w), (n, 2))[:, :, None, None]
    r = rng.uniform((10, 10), (h / 3, w / 3), (n, 2))[:, :, None, None]
    return ((yy - c[:, 0]) / r[:, 0]) ** 2 + ((xx - c[:, 1]) / r[:, 1]) ** 2 <= 1


def _pseudo_mask_entry(rng, n=5, h=375, w=500):
    counts = mask_rle.encode(_ellipses(rng, n, h, w))
    return {"masks": counts, "labels": rng.integers(0, 20, n).astype(np.int16),
            "scores": rng.random(n).astype(np.float32), "boxes": mask_rle.boxes(counts, h, w),
            "peak_index": np.arange(n, dtype=np.int32),
            "peak_yx": rng.uniform(0, h, (n, 2)).astype(np.float32)}


def test_pseudo_mask_store_is_no_larger_than_coco_results_json(tmp_path):
    """The store holds more than a compact COCO results JSON with boxes and still is smaller
    (per-object overhead used to make it 1.24x as large)."""
    import json
    rng = np.random.default_rng(0)
    entries = {f"2008_{i:06d}": _pseudo_mask_entry(rng) for i in range(40)}
    with StoreWriter(tmp_path / "s.h5", "pseudo_masks", [f"c{i}" for i in range(20)]) as w:
        for image_id, arrays in entries.items():
            w.add(image_id, 375, 500, arrays)
    results = [{"image_id": i, "category_id": int(a["labels"][j]) + 1,
                "segmentation": {"size": [375, 500], "counts": c},
                "score": float(str(a["scores"][j])),
                "bbox": [int(a["boxes"][j][0]), int(a["boxes"][j][1]),
                         int(a["boxes"][j][2] - a["boxes"][j][0]),
                         int(a["boxes"][j][3] - a["boxes"][j][1])]}
               for i, a in enumerate(entries.values()) for j, c in enumerate(a["masks"])]
    json_bytes = len(json.dumps(results, separators=(",", ":")))
    assert (tmp_path / "s.h5").stat().st_size <= json_bytes
    with StoreReader(tmp_path / "s.h5", "pseudo_masks") as r:  # and reads back the same
        for image_id, arrays in entries.items():
            e = r.read(image_id)
            assert e["masks"] == arrays["masks"]
            for name in ("labels", "scores", "boxes", "peak_index", "peak_yx"):
                assert e[name].dtype == arrays[name].dtype
                np.testing.assert_array_equal(e[name], arrays[name])


def test_small_arrays_and_many_attrs_carry_no_reserved_space(tmp_path):
    """Datasets' object headers hold no unused room, and 9 per-image attrs (as retrieval
    writes) stay in the group's header instead of a heap + B-tree of their own."""
    attrs = {"num_peaks": 5, "retrieval_status": "ok", "num_candidates": 15,
             "num_valid_candidates": 9, "peaks_without_proposal": 0, "peaks_merged": 1}
    sizes = {}
    for name, extra in (("few", {}), ("many", attrs)):
        with StoreWriter(tmp_path / f"{name}.h5", "pseudo_masks", ["a"]) as w:
            for i in range(30):
                w.add(f"img{i}", 375, 500, _pseudo_mask_entry(np.random.default_rng(i)), extra)
        sizes[name] = (tmp_path / f"{name}.h5").stat().st_size
    assert (sizes["many"] - sizes["few"]) / 30 < 6 * 60  # < 60 B per attr (dense: ~1.7 KB)
    with h5py.File(tmp_path / "many.h5") as f:
        g = f["images"]["img0"]
        assert g.attrs["retrieval_status"] == "ok" and g.attrs["num_candidates"] == 15
        for name in g:
            assert h5py.h5o.get_info(g[name].id).hdr.space.free == 0, name


def test_writers_can_be_open_together_and_a_failed_add_leaves_nothing(tmp_path):
    with StoreWriter(tmp_path / "a.h5", "peaks", ["a"]) as wa, \
            StoreWriter(tmp_path / "b.h5", "peaks", ["a"]) as wb:
        wa.add("x", 2, 2, {"v": np.zeros(2)})
        wb.add("x", 2, 2, {"v": np.ones(2)})
        with pytest.raises(TypeError):
            wa.add("y", 2, 2, {"v": np.array([object()])})  # h5py cannot store objects
        wa.add("y", 2, 2, {"v": np.full(2, 7.0)})
    with StoreReader(tmp_path / "a.h5") as ra, StoreReader(tmp_path / "b.h5") as rb:
        assert sorted(ra.image_ids) == ["x", "y"]
        assert ra.read("y")["v"].tolist() == [7.0, 7.0]
        assert rb.read("x")["v"].tolist() == [1.0, 1.0]


def _read_everything(path):
    with StoreReader(path, "pseudo_masks") as r:
        return dict(r.attrs), {i: r.read(i) for i in r.image_ids}


def _same(a, b):
    (attrs_a, images_a), (attrs_b, images_b) = a, b
    if {k: str(v) for k, v in attrs_a.items()} != {k: str(v) for k, v in attrs_b.items()}:
        return False
    if images_a.keys() != images_b.keys():
        return False
    for key, ea in images_a.items():
        eb = images_b[key]
        if ea.keys() != eb.keys():
            return False
        for k, va in ea.items():
            vb = eb[k]
            same = (np.array_equal(va, vb) and va.dtype == vb.dtype
                    if isinstance(va, np.ndarray) else va == vb)
            if not same:
                return False
    return True


def test_every_damage_is_found_or_harmless(tmp_path):
    """Bytes overwritten anywhere in a store: reading it either gives an InputError that
    names the file and the stage to rerun, or gives back exactly what was written (the bytes
    were unused space). Never a different value, never another exception: every array has a
    Fletcher-32 checksum, the metadata HDF5's own, string attrs a CRC-32 of their own."""
    rng = np.random.default_rng(3)
    path = tmp_path / "s.h5"
    with StoreWriter(path, "pseudo_masks", ["cat", "dog"], config_digest="abc",
                     attrs={"method": "prm", "count_instances": 9}) as w:
        for i in range(6):
            n = int(rng.integers(0, 4))
            w.add(f"img{i}", 40, 50, {
                "masks": mask_rle.encode(_random_masks(rng, n, 40, 50)),
                "labels": rng.integers(0, 2, n).astype(np.int16),
                "scores": rng.random(n).astype(np.float32),
                "maps": rng.random((n, 24, 24)).astype(np.float16)},
                attrs={"retrieval_status": "ok" if n else "no_peaks", "num_peaks": n})
    original = path.read_bytes()
    expected = _read_everything(path)
    damaged = tmp_path / "d.h5"
    found = harmless = 0
    for size, fill in ((1, None), (64, b"\xab"), (2048, b"\xab")):
        for start in range(0, len(original), 61 if size < 2048 else 257):
            data = bytearray(original)
            if fill is None:
                data[start] ^= 0x10  # one bit
            else:
                data[start:start + size] = fill * len(data[start:start + size])
            damaged.write_bytes(bytes(data))
            try:
                got = _read_everything(damaged)
            except InputError as e:
                assert e.where == str(damaged) and e.problem.endswith(
                    "rerun the stage that wrote it (snakemake --forcerun make_pseudo_masks; "
                    "by hand: tag2mask pseudo_masks make)"), e.problem
                found += 1
                continue
            assert _same(got, expected), f"{size} bytes at {start}: read back changed"
            harmless += 1
    assert found > 2 * harmless, (found, harmless)  # unused: mostly the string heap's room


def test_stores_without_checksums_still_read(tmp_path):
    """A store written before the checksums (same layout and format_version, plain datasets,
    no attr CRC) reads as before."""
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "tag2mask-store", "kind": "peaks", "format_version": 1,
                        "class_names": '["a", "b"]', "config_digest": "x"})
        g = f.create_group("images").create_group("im%2F1")
        g.attrs.update({"image_id": "im/1", "height": 4, "width": 5, "num_peaks": 1})
        g.create_dataset("peak_class", data=np.array([1], np.int16))
        g.create_dataset("maps", data=np.ones((1, 40, 40), np.float16), compression="gzip",
                         chunks=True)
    with StoreReader(path, "peaks") as r:
        assert r.class_names == ["a", "b"] and r.image_ids == ["im/1"]
        e = r.read("im/1")
        assert e["image_id"] == "im/1" and e["peak_class"].tolist() == [1]
        assert e["maps"].shape == (1, 40, 40)
    assert gather([path], tmp_path / "g.h5") is None
    with StoreReader(tmp_path / "g.h5", "peaks") as r:
        assert r.read("im/1")["peak_class"].tolist() == [1]


def test_new_stores_carry_checksums(tmp_path):
    path = tmp_path / "s.h5"
    with StoreWriter(path, "peaks", ["a"]) as w:
        w.add("x", 4, 4, {"small": np.arange(3), "big": np.zeros((64, 64)), "none": np.zeros(0),
                          "names": ["a", "b"]})
    with h5py.File(path) as f:
        g = f["images"]["x"]
        assert all(g[n].fletcher32 for n in ("small", "big", "names"))
        assert not g["none"].fletcher32  # nothing to check (HDF5 cannot chunk it)
        assert "str_attrs_crc32" in g.attrs and "str_attrs_crc32" in f.attrs
    with StoreReader(path) as r:  # the CRC attr is the reader's business, not its callers'
        assert "str_attrs_crc32" not in r.attrs and "str_attrs_crc32" not in r.read("x")
