"""The fast CRC32 must be the same function as zlib's, or every stored segment is 'corrupt'."""
import os
import zlib

from hypothesis import given, strategies as st

from s3pipefs.checksum import crc32


@given(st.binary(max_size=70_000), st.integers(0, 2**32 - 1))
def test_crc32_equals_zlib_with_any_start_value(data, start):
    assert crc32(data, start) == zlib.crc32(data, start)


def test_crc32_of_memoryview_slices_chains_like_one_pass():
    data = os.urandom(9 * 1024 * 1024 + 3)
    view = memoryview(data)
    crc = 0
    for i in range(0, len(data), 4 * 1024 * 1024):
        crc = crc32(view[i:i + 4 * 1024 * 1024], crc)
    assert crc == zlib.crc32(data)


def test_fast_implementation_is_installed():
    # isal is a declared dependency; falling back to zlib silently would cost ~10x CPU
    import s3pipefs.checksum as c
    assert c.crc32.__module__.startswith("isal")
