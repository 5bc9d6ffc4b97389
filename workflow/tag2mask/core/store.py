"""HDF5 stores for per-image results (peaks, proposals, pseudo masks).

One layout for every store (docs/formats.md has the per-kind arrays):

    /                 attrs: format="tag2mask-store", kind, format_version, class_names (JSON),
                             config_digest, plus kind-specific attrs
    /images/<key>     one group per image; attrs: image_id, height, width (+ per-image attrs)
        <array>       numeric arrays (large ones gzip-compressed) or string arrays; masks are
                      COCO RLE counts strings (`tag2mask.core.masks`), never one byte per pixel

<key> is the image id with '/' and '%' percent-encoded. Writers write to a temporary name and
rename on close, so a killed writer never leaves a file that passes for complete. Each image's
group is built in memory and copied in whole, so a failed `add` leaves no trace and no HDF5
object keeps unused header room (a store of pseudo masks is smaller than their COCO RLE JSON).
"""

import json
import urllib.parse
from pathlib import Path

import h5py
import numpy as np

from .atomic import atomic_path
from .errors import InputError

FORMAT = "tag2mask-store"
FORMAT_VERSION = 1
COUNT_PREFIX = "count_"  # root attrs that gather sums over the shards
_COMPRESS_BYTES = 4096
_STR = h5py.string_dtype("ascii")
_MAX_COMPACT_ATTRS = 64  # per-image attrs kept in the group's object header (see _new_image_group)
# File format bounds: v2 object headers and compact link storage cut an image group's
# overhead from about 1 KB (the 1.8 defaults) to 300 B; readable by any HDF5 >= 1.10.
_LIBVER = ("v110", "v110")


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
        self.file = h5py.File(tmp, "w", libver=_LIBVER)
        for k, v in self.root_attrs.items():
            self.file.attrs[k] = v
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
        self._staging.close()
        self.file.close()
        return self._atomic.__exit__(exc_type, exc, tb)

    def add(self, image_id, height, width, arrays, attrs=None):
        key = image_key(image_id)
        if key in self.images:
            raise ValueError(f"{self.path}: image {image_id!r} written twice")
        g = _new_image_group(self._staging, key)
        try:
            g.attrs["image_id"] = str(image_id)
            g.attrs["height"] = int(height)
            g.attrs["width"] = int(width)
            for k, v in (attrs or {}).items():
                g.attrs[k] = v
            for name, value in arrays.items():
                _write_array(g, name, value)
            self._staging.copy(g, self.images, name=key)
        finally:
            del self._staging[key]  # its space is reused by the next image


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
        group.create_dataset(name, data=data, compression="gzip", compression_opts=6)
        return
    arr = np.asarray(value)
    if arr.nbytes >= _COMPRESS_BYTES:
        group.create_dataset(name, data=arr, compression="gzip", compression_opts=1,
                             shuffle=True, chunks=True)
    else:
        group.create_dataset(name, data=arr)


class StoreReader:
    """Read a store; checks format, kind and version on open.

    with StoreReader(path, "pseudo_masks") as r:
        for image_id in r.image_ids: entry = r.read(image_id)  # dict of arrays + attrs
    """

    def __init__(self, path, kind=None):
        self.path = Path(path)
        try:
            self.file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise InputError(self.path, "store not found") from None
        except OSError as e:
            raise InputError(self.path, f"not a readable HDF5 file ({e})") from None
        a = {k: self.file.attrs[k] for k in self.file.attrs.keys()}
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
        self._images = self.file["images"]

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
        return [urllib.parse.unquote(k) for k in self._images]

    def __contains__(self, image_id):
        return image_key(image_id) in self._images

    def __len__(self):
        return len(self._images)

    def read(self, image_id, names=None):
        """Arrays (all, or just `names`) and attrs of one image as a dict."""
        g = self._images[image_key(image_id)]
        out = dict(g.attrs)
        for name in names if names is not None else g.keys():
            ds = g[name]
            if h5py.check_string_dtype(ds.dtype) is not None:
                out[name] = [s.decode("ascii") for s in ds[()]]
            else:
                out[name] = ds[()]
        return out


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
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w", libver=_LIBVER) as out:
        for k, v in root_attrs.items():
            out.attrs[k] = v
        images = out.create_group("images")
        for p in shard_paths:
            with StoreReader(p) as r:
                for k in ("kind", "class_names", "config_digest"):
                    if r.attrs.get(k) != root_attrs.get(k):
                        raise InputError(p, f"shard attribute {k!r} differs from {shard_paths[0]}")
                for key in r.file["images"]:
                    if key in images:
                        raise InputError(p, f"image {key!r} appears in more than one shard")
                    r.file.copy(r.file["images"][key], images, name=key)
