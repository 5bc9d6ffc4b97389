"""HDF5 stores for per-image results (peaks, proposals, pseudo masks).

One layout for every store (docs/formats.md has the per-kind arrays):

    /                 attrs: format="tag2mask-store", kind, format_version, class_names (JSON),
                             config_digest, plus kind-specific attrs
    /images/<key>     one group per image; attrs: image_id, height, width (+ per-image attrs)
        <array>       numeric arrays (large ones gzip-compressed) or string arrays; masks are
                      COCO RLE counts strings (`tag2mask.core.masks`), never one byte per pixel

Every non-empty array carries a Fletcher-32 checksum (HDF5's fletcher32 filter, one per
chunk), the file's metadata (superblock, object headers, B-trees) has HDF5's own checksums
(the 1.10 format), and the text of string attributes, which HDF5 keeps in its global heap
without a checksum, is covered by a CRC-32 attribute of its own (`str_attrs_crc32`, hidden
from readers). So a byte changed after writing is found when it is read: the
reader turns any read error into an InputError naming the file, the dataset, the problem and
the stage to rerun (`StoreReader.checked`). Stores written before the checksums were added read as
before, unchecked (same layout, same format_version).

<key> is the image id with '/' and '%' percent-encoded. Writers write to a temporary name and
rename on close, so a killed writer never leaves a file that passes for complete. Each image's
group is built in memory and copied in whole, so a failed `add` leaves no trace and no HDF5
object keeps unused header room (a store of pseudo masks is smaller than their COCO RLE JSON).
"""

import json
import urllib.parse
import zlib
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from .atomic import atomic_path
from .errors import InputError, rerun

FORMAT = "tag2mask-store"
FORMAT_VERSION = 1
COUNT_PREFIX = "count_"  # root attrs that gather sums over the shards
_COMPRESS_BYTES = 4096
_STR = h5py.string_dtype("ascii")
_MAX_COMPACT_ATTRS = 64  # per-image attrs kept in the group's object header (see _new_image_group)
STR_CRC = "str_attrs_crc32"  # CRC-32 of an object's string attrs (see the module docstring)
# Errors h5py raises for a damaged file (a failed checksum, a bad signature, a short read)
# (KeyError: h5py's "Unable to open object (incorrect metadata checksum ...)"; a name that is
# not there is checked before reading, outside `checked`)
_READ_ERRORS = (OSError, RuntimeError, ValueError, TypeError, KeyError)
# The stage that writes each kind (the remedy a damaged store's error names); pseudo-mask
# stores have four writers, told apart by their root attrs (see `writer_of`)
WRITERS = {
    "peaks": ("extract_peaks", "peaks extract"),
    "proposals": ("propose", "proposals make"),
    "pseudo_masks": ("make_pseudo_masks", "pseudo_masks make"),
}
# File format bounds: v2 object headers and compact link storage cut an image group's
# overhead from about 1 KB (the 1.8 defaults) to 300 B; readable by any HDF5 >= 1.10.
_LIBVER = ("v110", "v110")
# HDF5's metadata cache (object headers, B-tree nodes, heaps) starts at 2 MB and grows,
# adaptively, up to 32 MB per open file. A store is written, read or gathered image by image,
# so the cache fills with entries never used again, and the process's RSS grows with the
# number of images until the cache is full: far more than the cache's nominal size (it counts
# the entries' size on file, not the memory behind them). Measured (2026-12-03, 3200 images of
# peaks-like arrays, 2 shards): gather 45 -> 137 MB RSS at the default, 50 MB at 256 KB;
# reading every image 127 MB against 44 MB; no time difference (one image's metadata is a
# few KB and is used once).
_MDC_MAX_BYTES = 1 << 18


def _bound_metadata_cache(f):
    """Bound the metadata cache of the open h5py.File `f` (see _MDC_MAX_BYTES)."""
    config = f.id.get_mdc_config()
    config.set_initial_size = True
    config.initial_size = _MDC_MAX_BYTES // 2
    config.min_size = _MDC_MAX_BYTES // 4
    config.max_size = _MDC_MAX_BYTES
    f.id.set_mdc_config(config)
    return f


def image_key(image_id):
    return urllib.parse.quote(str(image_id), safe="")


class StoreWriter:
    """Context manager that writes a store atomically.

    with StoreWriter(path, "pseudo_masks", class_names, config_digest=d) as w:
        w.add(image_id, height, width, {"masks": rle_list, "labels": np.array(...)})
    """

    def __init__(self, path, kind, class_names, config_digest="", attrs=None):
        self.path = Path(path)
        self.kind = kind
        self.root_attrs = {
            "format": FORMAT,
            "kind": kind,
            "format_version": FORMAT_VERSION,
            "class_names": json.dumps(list(class_names)),
            "config_digest": config_digest,
            **(attrs or {}),
        }

    def __enter__(self):
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self.file = _bound_metadata_cache(h5py.File(tmp, "w", libver=_LIBVER))
        _write_attrs(self.file, self.root_attrs)
        self.images = self.file.create_group("images")
        # Each image's group is built in this in-memory file, then copied into the store
        # (H5Ocopy). HDF5 gives every new dataset a 256-byte object header, most of it room
        # for attributes ours never get; a copy writes only the used part: about 180 B less per
        # array, 1.2 KB per pseudo-mask image (as much as its compressed masks). The store
        # reads exactly as if written directly.
        self._staging = h5py.File(f"tag2mask-staging-{id(self)}", "w", driver="core",
                                  backing_store=False, libver=_LIBVER)
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self._staging.close()
            if exc_type is None:
                _seal_attrs(self.file)  # root attrs callers set through `file` count too
            self.file.close()  # flushes: where a full disk shows
        except BaseException as closing:
            if exc is None:  # else the block's own error is the one to tell (and caused this)
                # the temporary file goes, and a full disk becomes one line (core.atomic)
                self._atomic.__exit__(type(closing), closing, closing.__traceback__)
                raise
        return self._atomic.__exit__(exc_type, exc, tb)

    def add(self, image_id, height, width, arrays, attrs=None):
        key = image_key(image_id)
        if key in self.images:
            raise ValueError(f"{self.path}: image {image_id!r} written twice")
        g = _new_image_group(self._staging, key)
        try:
            _write_attrs(g, {"image_id": str(image_id), "height": int(height),
                             "width": int(width), **(attrs or {})})
            for name, value in arrays.items():
                _write_array(g, name, value)
            self._staging.copy(g, self.images, name=key)
        finally:
            del self._staging[key]  # its space is reused by the next image


def _write_attrs(obj, attrs):
    for k, v in attrs.items():
        obj.attrs[k] = v
    _seal_attrs(obj)


def _seal_attrs(obj):
    """Set the CRC-32 attr of `obj`'s string attrs, as a reader reads them back."""
    attrs = {k: obj.attrs[k] for k in obj.attrs if k != STR_CRC}
    obj.attrs[STR_CRC] = np.uint32(_str_crc(attrs))


def _str_crc(attrs):
    """CRC-32 of the string-valued attrs (str, or a list / array of str) in canonical form."""
    texts = []
    for k in sorted(attrs):
        v = attrs[k]
        if isinstance(v, str):
            texts.append([k, str(v)])
        elif isinstance(v, (list, tuple, np.ndarray)) and len(v) and all(
                isinstance(x, str) for x in v):
            texts.append([k, [str(x) for x in v]])
    return zlib.crc32(json.dumps(texts).encode("utf-8"))


def _new_image_group(parent, name):
    # Attributes stay in the group's object header up to _MAX_COMPACT_ATTRS of them. HDF5's
    # default (8) would move the 9 attrs of a retrieval image into "dense" storage: a heap
    # and a B-tree per group, about 1.7 KB more per image.
    # (Links have the same limit, 8, that h5py cannot raise: an image with more than 8 arrays
    # would cost about 1.2 KB more.)
    gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    gcpl.set_attr_phase_change(_MAX_COMPACT_ATTRS, _MAX_COMPACT_ATTRS)
    gcpl.set_obj_track_times(False)  # as h5py's create_group: no timestamps (16 B)
    return h5py.Group(h5py.h5g.create(parent.id, name.encode(), gcpl=gcpl))


def _write_array(group, name, value):
    if isinstance(value, (list, tuple)) and (len(value) == 0 or isinstance(value[0], (str, bytes))):
        if len(value) == 0:
            group.create_dataset(name, shape=(0,), dtype=_STR)
            return
        # Fixed-length byte strings, gzip-compressed (level 6: 15% smaller than 1 on RLE text,
        # still fast on so little data): RLE text shrinks to a third or less and the
        # NUL padding to nothing (variable-length strings cannot be compressed in HDF5).
        # Readers see ASCII strings either way.
        data = np.array([v.encode("ascii") if isinstance(v, str) else bytes(v) for v in value])
        group.create_dataset(name, data=data, compression="gzip", compression_opts=6,
                             fletcher32=True)
        return
    arr = np.asarray(value)
    if arr.nbytes >= _COMPRESS_BYTES:
        group.create_dataset(name, data=arr, compression="gzip", compression_opts=1,
                             shuffle=True, chunks=True, fletcher32=True)
    elif arr.size and arr.ndim:
        # one chunk (HDF5 1.10 indexes a single chunk without a B-tree): 4 bytes of checksum
        group.create_dataset(name, data=arr, chunks=arr.shape, fletcher32=True)
    else:  # nothing to check: an empty array (chunks cannot be empty) or a scalar
        group.create_dataset(name, data=arr)


class StoreReader:
    """Read a store; checks format, kind and version on open.

    with StoreReader(path, "pseudo_masks") as r:
        for image_id in r.image_ids: entry = r.read(image_id)  # dict of arrays + attrs
    """

    def __init__(self, path, kind=None, writer_kind=None):
        # writer_kind: the kind a reader that accepts any expects, for the remedy of a store
        # whose root attrs cannot be read (see `remedy`)
        self.path = Path(path)
        self.expected_kind = kind or writer_kind
        self.attrs = {}
        try:
            self.file = _bound_metadata_cache(h5py.File(self.path, "r"))
        except FileNotFoundError:
            raise InputError(self.path, "store not found") from None
        except OSError as e:
            raise InputError(self.path, f"not a readable HDF5 file ({_one_line(e)}); "
                                        f"{self.remedy()}") from None
        try:
            with self.checked("the root attributes"):
                a = self._attrs(self.file, "the root attributes")
        except InputError:
            self.file.close()
            raise
        problem = None
        if a.get("format") != FORMAT:
            problem = f"not a {FORMAT} file"
        elif int(a.get("format_version", -1)) != FORMAT_VERSION:
            problem = (f"store format version {a.get('format_version')} is not the supported "
                       f"version {FORMAT_VERSION}")
        elif kind is not None and a["kind"] != kind:
            problem = f"expected a {kind!r} store, found {a['kind']!r}"
        if problem:
            self.file.close()
            raise InputError(self.path, problem)
        self.kind = a["kind"]
        self.class_names = json.loads(a["class_names"])
        self.attrs = a
        try:
            with self.checked("group /images"):
                self._images = self.file["images"]
        except InputError:
            self.file.close()
            raise

    def remedy(self):
        """What to do about a damaged store: rerun the stage that wrote it."""
        rule, command = writer_of(self.attrs.get("kind", self.expected_kind), self.attrs)
        return "rerun the stage that wrote it" if rule is None else rerun(rule, command)

    def _attrs(self, obj, what):
        """The attrs of an HDF5 object, their string text checked against its CRC-32 (stores
        written before the CRC have none: not checked)."""
        a = {k: obj.attrs[k] for k in obj.attrs}
        crc = a.pop(STR_CRC, None)
        if crc is not None and int(crc) != _str_crc(a):
            raise InputError(self.path, f"damaged store: {what} do not match their checksum; "
                                        f"{self.remedy()}")
        return a

    @contextmanager
    def checked(self, what):
        """Any read error inside becomes an InputError naming the file and `what` was read."""
        try:
            yield
        except _READ_ERRORS as e:
            raise InputError(self.path, f"damaged store: {what} cannot be read "
                                        f"({_one_line(e)}); {self.remedy()}") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.file.close()

    # Group names are image_key(image_id), so one image is found without listing the others
    # (opening a store costs the same for 10 or 100,000 images).
    @property
    def image_ids(self):
        with self.checked("the image list (group /images)"):
            return [urllib.parse.unquote(k) for k in self._images]

    def __contains__(self, image_id):
        with self.checked("the image list (group /images)"):
            return image_key(image_id) in self._images

    def __len__(self):
        with self.checked("the image list (group /images)"):
            return len(self._images)

    def read(self, image_id, names=None):
        """Arrays (all, or just `names`) and attrs of one image as a dict. An image not in
        the store is a KeyError; a read error (a failed checksum) an InputError."""
        key = image_key(image_id)
        where = f"/images/{key}"
        if image_id not in self:
            raise KeyError(image_id)
        with self.checked(f"group {where}"):
            g = self._images[key]
            out = self._attrs(g, f"the attributes of group {where}")
            present = list(g.keys())
        for name in present if names is None else names:
            if name not in present:
                raise KeyError(f"{image_id}: no array {name!r}")
            with self.checked(f"dataset {where}/{name}"):
                ds = g[name]
                if h5py.check_string_dtype(ds.dtype) is not None:
                    out[name] = [s.decode("ascii") for s in ds[()]]
                else:
                    out[name] = ds[()]
        return out

    def read_parts(self, image_id):
        """(arrays, attrs) of one image: `read`'s dict split in two, for a stage that rewrites
        a store image by image (attrs include image_id, height and width)."""
        entry = self.read(image_id)
        where = f"/images/{image_key(image_id)}"
        with self.checked(f"group {where}"):
            names = list(self._images[image_key(image_id)].keys())
        return {name: entry.pop(name) for name in names}, entry


def writer_of(kind, attrs):
    """(rule, `tag2mask` command) that writes a store of `kind` with root `attrs`; (None,
    None) for a kind this module does not know."""
    if kind == "pseudo_masks" and attrs.get("source") == "ground_truth":
        return "gt_training_masks", "upper_bound gt-masks"
    if kind == "pseudo_masks" and "merge_stats" in attrs:
        return "self_training_masks", "self_training masks"
    if kind == "pseudo_masks" and "verification" in attrs:
        return "verify", "verification rescore"
    if kind == "proposals" and attrs.get("method") == "external":
        return "propose", "proposals import"
    return WRITERS.get(kind, (None, None))


def _one_line(e):
    return " ".join(str(e).split())


def gather(shard_paths, out_path):
    """Join shard stores of one kind into one store (groups copied, attrs checked equal)."""
    shard_paths = [Path(p) for p in shard_paths]
    if not shard_paths:
        raise InputError(out_path, "no shard stores to gather")
    first = StoreReader(shard_paths[0])
    root_attrs = dict(first.attrs)
    first.close()
    root_attrs.pop("shard", None)
    # Root attrs named count_* are per-shard counts (e.g. images without peaks): summed.
    counts = {k: 0 for k in root_attrs if k.startswith(COUNT_PREFIX)}
    for p in shard_paths:
        with StoreReader(p) as r:
            for k in counts:
                counts[k] += int(r.attrs.get(k, 0))
    root_attrs.update(counts)
    with atomic_path(out_path) as tmp, \
            _bound_metadata_cache(h5py.File(tmp, "w", libver=_LIBVER)) as out:
        _write_attrs(out, root_attrs)
        images = out.create_group("images")
        for p in shard_paths:
            with StoreReader(p) as r:
                for k in ("kind", "class_names", "config_digest"):
                    if r.attrs.get(k) != root_attrs.get(k):
                        raise InputError(p, f"shard attribute {k!r} differs from {shard_paths[0]}")
                for key in r.image_ids:
                    key = image_key(key)
                    if key in images:
                        raise InputError(p, f"image {key!r} appears in more than one shard")
                    # copied as stored (chunks and their checksums unchanged): a damaged
                    # shard's data is found when the gathered store is read
                    with r.checked(f"group /images/{key}"):
                        r.file.copy(r.file["images"][key], images, name=key)
