"""The transfer engine: writers, readers and the Engine facade over them."""
from s3pipefs.engine.core import Engine, Entry

__all__ = ["Engine", "Entry"]
