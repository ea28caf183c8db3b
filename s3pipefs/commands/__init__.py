"""One module per command, all of one shape; cli.py holds the registry.

A command module has a docstring, ``HELP`` (one line, shown in ``s3pipefs --help``),
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status). It raises
``errors.S3PipeError`` for failures; cli.py prints them as one line and exits with the
error's status. cli.py imports a module only when its command runs (or for the command
list of ``--help``), so module level imports stay light: the engine, the store, FUSE and
tqdm are imported inside ``run``.

The S3 and transfer options (--endpoint-url, --workers/-n, --verbose/-v, ...) come from
the option table (s3pipefs/options.py) through ``options.add_arguments``; common.py builds
the config objects, the store and the engine from them.
"""
