"""The on-S3 format: manifest rendering/parsing and segment naming (no server needed)."""
import configparser

import pytest

from s3pipefs import errors, manifest as mf

# Exactly what s3pipe2 0.1 writes (RawConfigParser; completed stream).
S3PIPE2_MANIFEST = b"""[s3pipe2]
version = 0.1
segment_size = 100
upload_began = 2015-06-01T10:00:00.000001
completed = true
num_segments = 3
total_size = 250000000
upload_ended = 2015-06-01T10:05:00.000001

"""


def test_segment_names_are_15_digits_from_one():
    assert mf.segment_name(1) == "000000000000001"
    assert mf.segment_name(123) == "000000000000123"
    assert mf.segment_index("000000000000042") == 42
    for bad in ("00000000000001", "0000000000000001", "000000000000000", ".manifest", "00000000000000a"):
        assert mf.segment_index(bad) is None
    with pytest.raises(errors.ManifestError):
        mf.segment_name(0)
    with pytest.raises(errors.ManifestError):
        mf.segment_name(10**15)


def test_s3pipe2_manifest_parses():
    m = mf.parse(S3PIPE2_MANIFEST)
    assert m.completed and m.num_segments == 3 and m.total_size == 250_000_000
    assert m.segment_size == 100_000_000  # s3pipe2 counts decimal MB
    assert not m.own and m.layout is None


def test_round_trip_keeps_every_field():
    m = mf.Manifest(completed=True, num_segments=3, total_size=2 * 1024 + 5, segment_size=1024,
                    layout=mf.Layout.from_sizes([1024, 1024, 5]), sha256="ab" * 32, chain="cd" * 16,
                    writer_id="host:1:abcd", heartbeat=1700000000.5, upload_began="2026-01-01T00:00:00")
    back = mf.parse(mf.render(m))
    assert back.completed and back.num_segments == 3 and back.total_size == 2053
    assert back.layout == m.layout and list(back.layout.sizes()) == [1024, 1024, 5]
    assert back.sha256 == m.sha256 and back.chain == m.chain and back.writer_id == m.writer_id
    assert back.heartbeat == pytest.approx(m.heartbeat)
    assert back.mtime_ns is None and back.mode is None  # not set: not written


def test_stored_file_attributes_round_trip_exactly():
    """mtime to the nanosecond (rsync compares nanoseconds), mode as octal bits."""
    m = mf.Manifest(completed=True, num_segments=1, total_size=1, segment_size=8, layout=mf.Layout.from_sizes([1]),
                    mtime_ns=1577934245_123456789, mode=0o640)
    text = mf.render(m).decode()
    assert "mtime_ns = 1577934245123456789" in text and "mode = 0640" in text
    back = mf.parse(text.encode())
    assert back.mtime_ns == 1577934245_123456789 and back.mode == 0o640 and not back.extra
    assert mf.parse(mf.render(m.with_(mtime_ns=0, mode=0))).mtime_ns == 0  # the epoch and 0000 are values too


def test_stored_owners_round_trip_and_older_parsers_keep_them_as_unknown_keys():
    """chown through a mount: uid and gid as decimal ids; 0 (root) is an owner too. A
    parser that predates the keys (modelled by dropping them from the known set) keeps
    them in ``extra`` and renders them back unchanged."""
    m = mf.Manifest(completed=True, num_segments=1, total_size=1, segment_size=8, layout=mf.Layout.from_sizes([1]),
                    uid=1234, gid=0)
    text = mf.render(m).decode()
    assert "uid = 1234" in text and "gid = 0" in text
    back = mf.parse(text.encode())
    assert (back.uid, back.gid) == (1234, 0) and not back.extra
    assert mf.parse(mf.render(m.with_(uid=None, gid=None))).uid is None
    # What a format-1 reader without the keys does with them: unknown keys ride in extra.
    old = mf.parse(text.encode()).with_(uid=None, gid=None, extra={"uid": "1234", "gid": "0"})
    assert mf.parse(mf.render(old)).uid == 1234


def test_rendered_manifest_reads_with_s3pipe2_rules():
    """s3pipe2 reads num_segments (int), total_size and completed (bool) from [s3pipe2]."""
    m = mf.Manifest(completed=True, num_segments=2, total_size=7, segment_size=5_000_000,
                    layout=mf.Layout.from_sizes([5, 2]))
    cp = configparser.RawConfigParser()
    cp.read_string(mf.render(m).decode())
    assert cp.getint("s3pipe2", "num_segments") == 2
    assert cp.get("s3pipe2", "total_size") == "7"
    assert cp.getboolean("s3pipe2", "completed") is True
    assert cp.getint("s3pipe2", "segment_size") == 5
    for key in ("version", "upload_began", "upload_ended"):
        assert cp.has_option("s3pipe2", key)


@pytest.mark.parametrize("text,needle", [
    (b"not an ini file", "malformed"),
    (b"[other]\na = 1\n", "no [s3pipe2]"),
    (b"[s3pipe2]\ncompleted = maybe\n", "not a boolean"),
    (b"[s3pipe2]\ncompleted = true\nnum_segments = -1\ntotal_size = 0\n", "out of range"),
    (b"[s3pipe2]\ncompleted = true\nnum_segments = 1\ntotal_size = 99999999999999999999\n", "out of range"),
    (b"[s3pipe2]\ncompleted = true\nnum_segments = x\ntotal_size = 0\n", "not an integer"),
    (b"[s3pipe2]\ncompleted = true\ntotal_size = 0\n", "missing key 'num_segments'"),
    (b"[s3pipe2]\ncompleted = false\n[s3pipefs]\nformat = 99\nsegment_size_bytes = 1\n", "newer s3pipefs"),
    (b"[s3pipe2]\ncompleted = true\nnum_segments = 2\ntotal_size = 10\n[s3pipefs]\nformat = 1\n"
     b"segment_size_bytes = 8\nlayout = 1x8\n", "layout has 1 segments"),
    (b"[s3pipe2]\ncompleted = true\nnum_segments = 2\ntotal_size = 11\n[s3pipefs]\nformat = 1\n"
     b"segment_size_bytes = 8\nlayout = 1x8,1x2\n", "adds up to 10"),
    (b"[s3pipe2]\ncompleted = true\nnum_segments = 1\ntotal_size = 1\n[s3pipefs]\nformat = 1\n"
     b"segment_size_bytes = 8\nlayout = ../../etc\n", "bad layout run"),
    (b"[s3pipe2]\ncompleted = false\n[s3pipefs]\nformat = 1\nsegment_size_bytes = 8\nmtime_ns = 1.5\n",
     "'mtime_ns' is not an integer"),
    (b"[s3pipe2]\ncompleted = false\n[s3pipefs]\nformat = 1\nsegment_size_bytes = 8\nmtime_ns = -5\n",
     "out of range"),
    (b"[s3pipe2]\ncompleted = false\n[s3pipefs]\nformat = 1\nsegment_size_bytes = 8\nmode = 0999\n",
     "'mode' is not octal"),
    (b"[s3pipe2]\ncompleted = false\n[s3pipefs]\nformat = 1\nsegment_size_bytes = 8\nmode = 17777\n",
     "'mode' is not octal"),
    (b"[s3pipe2]\ncompleted = false\n[s3pipefs]\nformat = 1\nsegment_size_bytes = 8\nuid = -1\n",
     "out of range"),
    (b"[s3pipe2]\ncompleted = false\n[s3pipefs]\nformat = 1\nsegment_size_bytes = 8\ngid = 4294967295\n",
     "out of range"),
    (b"[s3pipe2]\ncompleted = false\n[s3pipefs]\nformat = 1\nsegment_size_bytes = 8\nuid = root\n",
     "'uid' is not an integer"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[s3pipe2]\n" + b"x" * (2 << 20), "too large"),
])
def test_bad_manifests_are_refused_with_a_clear_message(text, needle):
    with pytest.raises(errors.ManifestError) as ei:
        mf.parse(text, where="s3://b/s/.manifest")
    assert needle in str(ei.value)
    assert "s3://b/s/.manifest" in str(ei.value)


def test_layout_rle_and_append():
    lay = mf.Layout.from_sizes([4, 4, 4, 2])
    assert lay.render() == "3x4,1x2" and lay.count == 4 and lay.total == 14
    lay2 = lay.append(2).append(4)
    assert lay2.render() == "3x4,2x2,1x4"
    assert mf.Layout.parse(lay2.render()) == lay2
    assert lay2.truncate(4).render() == "3x4,1x2"
