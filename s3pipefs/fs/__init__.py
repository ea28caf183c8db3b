"""The FUSE face of s3pipefs: a bucket (or bucket/prefix) as a directory tree.

Layers, each usable without the ones above it::

    mount_helper.py   mount(8) helper argv convention  (/sbin/mount.s3pipefs)
    mount.py          `s3pipefs mount`: options -> daemon -> FUSE loop -> clean shutdown
    daemon.py         fork with a readiness pipe, logging, signal watcher, lazy unmount
    operations.py     thin mfusepy Operations adapter: one errno mapping, fuse_file_info flags
    filesystem.py     FUSE-free filesystem: paths, open/read/write/flush/release, shutdown
    handles.py        open-file handles (sequential writer, reader) and their locked table
    namespace.py      path -> stream/object/dir with TTL caches; mkdir/rmdir/unlink/rename
    options.py        -o option strings -> frozen config objects (pure)
    fuselib.py        picks libfuse 3 (1 MiB requests) or 2 for mfusepy, before import

Everything below operations.py raises S3PipeError subclasses and is tested in-process
against a real S3 server; the same scenarios then run through a real kernel mount.
"""
