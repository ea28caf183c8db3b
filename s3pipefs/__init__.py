"""s3pipefs: S3 as a pipe and as a disk for huge sequential data."""

__version__ = "0.1.0"
