"""A structural check of JPEG files, for corruption that PIL decodes without a word.

libjpeg decodes damaged entropy-coded data (a block of garbage, overwritten bytes) into a
picture of grey or noise and only warns; PIL drops those warnings, so such a file would enter
the dataset with its tags. `jpeg_problem(path)` walks the file's marker structure instead:
segments up to each start-of-scan by their lengths, then the scan data, where a 0xFF byte may
only be followed by 0x00 (byte stuffing), a restart marker, more 0xFF fill, or a marker that
may legally follow a scan (tables, another scan, comments, end of image). Anything else, or no
end-of-image marker at all, is reported. Data after the end-of-image marker is ignored (some
cameras append their own).

It cannot see every corruption (damage that happens to form valid codes decodes silently),
but random garbage in the data almost always contains a 0xFF with an impossible follower.
"""

import numpy as np

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
# markers with a length field that may appear between scans (tables, restart interval,
# number of lines, application data, comments)
_BETWEEN_SCANS = {0xC4, 0xCC, 0xDB, 0xDC, 0xDD, 0xFE, *range(0xE0, 0xF0)}
_STANDALONE = {0x00, 0xFF, *range(0xD0, 0xD8)}  # byte stuffing, fill, RST0-7


def jpeg_problem(path):
    """None for a structurally sound JPEG file, else what is wrong with it (a short text)."""
    data = np.fromfile(path, dtype=np.uint8)
    if len(data) < 4 or data[0] != 0xFF or data[1] != SOI:
        return "not a JPEG file (no start-of-image marker)"
    pos, scans = 2, 0
    while True:  # one segment per round, up to the end of the last scan
        while pos + 1 < len(data) and data[pos] == 0xFF and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 2 > len(data):
            return "truncated JPEG (no end-of-image marker)"
        if data[pos] != 0xFF:
            return f"corrupt JPEG (no marker at byte {pos})"
        marker = int(data[pos + 1])
        if marker == EOI:
            return None if scans else "JPEG without image data (end-of-image before any scan)"
        if pos + 4 > len(data):
            return "truncated JPEG (no end-of-image marker)"
        start, pos = pos, pos + 2 + (int(data[pos + 2]) << 8 | int(data[pos + 3]))
        if pos > len(data):
            return (f"corrupt or truncated JPEG (segment 0x{marker:02X} at byte {start} runs "
                    "past the end of the file)")
        if marker == SOS:
            scans += 1
            problem, pos = _scan_end(data, pos)
            if problem or pos is None:
                return problem


def _scan_end(data, start):
    """Walk entropy-coded data from `start`: (problem, None) at a bad marker or the end of
    the file; (None, None) at EOI; (None, position) at a marker that starts a new segment."""
    tail = data[start:]
    ffs = np.flatnonzero(tail[:-1] == 0xFF)
    followers = tail[ffs + 1]
    bad = ~np.isin(followers, list(_STANDALONE))
    for i in np.flatnonzero(bad):
        pos = start + int(ffs[i])
        marker = int(followers[i])
        if marker == EOI:
            return None, None
        if marker == SOS or marker in _BETWEEN_SCANS:
            return None, pos
        return f"corrupt JPEG data (marker 0x{marker:02X} at byte {pos})", None
    return "truncated JPEG (no end-of-image marker)", None
