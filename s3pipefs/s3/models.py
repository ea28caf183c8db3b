"""botocore's model loading, made cheap for a process that talks to S3 and exits.

Two costs paid by every short ``cat``, ``put`` or ``cp`` before its first request:

* Listing every model directory (~440 of them) to check that "s3" is a known service:
  ~900 listdirs and ~2700 stats, a quarter of a second on a cold cache. The loader answers
  "s3" from a short list and asks botocore for the full one only for any other name: the
  credential chain creates STS, SSO and sign-in clients for profiles with ``role_arn``,
  ``sso_session`` or ``login``.
* Parsing the JSON models (endpoints, the S3 service model, its endpoint rules): ~45 ms of
  CPU. The parsed data is kept in one marshal file per botocore installation (its version,
  the Python version and where it is installed: every virtualenv has its own) and read back
  in ~12 ms. marshal holds plain data only (no pickle-style code execution), and the
  cache is read only from a directory that is ours and not writable by anyone else, since
  a model decides where requests and credentials are sent. Each entry records its source
  file's size and mtime; a changed model file is parsed again, and a save drops entries
  whose file has changed or gone, so the cache holds what this installation reads.

``S3PIPEFS_CACHE_DIR`` moves the cache (default ``$XDG_CACHE_HOME/s3pipefs`` or
``~/.cache/s3pipefs``); set it empty to turn it off.
"""
from __future__ import annotations

import hashlib
import logging
import marshal
import os
import stat
import sys
import tempfile
import threading

import botocore
import botocore.loaders

log = logging.getLogger(__name__)

# The file names botocore tries for one model path, in its order.
_SUFFIXES = tuple(getattr(botocore.loaders, "_JSON_OPEN_METHODS", None) or (".json",))


def cache_dir() -> str | None:
    """Where model caches live, or None when turned off."""
    given = os.environ.get("S3PIPEFS_CACHE_DIR")
    if given is not None:
        return given or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "s3pipefs")


def cache_file_name() -> str:
    """One file per botocore installation. Shared between virtualenvs, the file grew with
    each one's entries, and every start-up read them all (5 MB and 64 ms for three)."""
    where = hashlib.sha256(os.path.dirname(os.path.abspath(botocore.__file__)).encode()).hexdigest()[:12]
    return f"botocore-{botocore.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-{where}.marshal"


def _current(path: str, size: int, mtime_ns: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (size, mtime_ns)


def _ours(st: os.stat_result) -> bool:
    """Owned by us and writable by nobody else."""
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _private_dir(path: str, create: bool) -> bool:
    """True when ``path`` is a directory that is _ours."""
    try:
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and _ours(st)


def _plain(data):
    """botocore parses into OrderedDicts; marshal takes dicts (which keep order too)."""
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data


class ModelCache:
    """Parsed model files by path, each with the size and mtime of the file it came from."""

    def __init__(self, directory: str | None):
        self._dir = directory
        self._path = os.path.join(directory, cache_file_name()) if directory else None
        self._entries: dict | None = None  # as read; botocore may change what get() hands out
        self._fresh: dict = {}  # parsed in this process, copied before botocore saw them
        self._lock = threading.Lock()

    def _load(self) -> dict:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def _read(self) -> dict:
        if self._path is None or not _private_dir(self._dir, create=False):
            return {}
        try:
            with open(self._path, "rb") as f:
                if not _ours(os.fstat(f.fileno())):
                    return {}
                entries = marshal.loads(f.read())
        except (OSError, EOFError, ValueError, TypeError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def get(self, path: str):
        """The cached data for model file ``path`` (full name with suffix), or None."""
        with self._lock:
            hit = self._load().get(path)
        if not (isinstance(hit, tuple) and len(hit) == 3):
            return None
        size, mtime_ns, data = hit
        return data if _current(path, size, mtime_ns) else None

    def put(self, path: str, data) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        with self._lock:
            self._fresh[path] = (st.st_size, st.st_mtime_ns, _plain(data))

    def save(self) -> None:
        """Write the cache if it gained entries; any failure leaves things as they were."""
        with self._lock:
            if not self._fresh or self._path is None:
                return
            fresh, self._fresh = self._fresh, {}
        if not _private_dir(self._dir, create=True):
            return
        # The file's own entries, not the ones handed out: botocore merges its "extras"
        # into a service model in place. Entries whose file changed or went are dropped.
        entries = {path: hit for path, hit in self._read().items()
                   if isinstance(hit, tuple) and len(hit) == 3 and _current(path, *hit[:2])}
        entries.update(fresh)
        try:
            fd, tmp = tempfile.mkstemp(dir=self._dir, prefix=".models-")
            try:
                with os.fdopen(fd, "wb") as f:
                    marshal.dump(entries, f)
                os.replace(tmp, self._path)
            except BaseException:
                os.unlink(tmp)
                raise
        except (OSError, ValueError) as e:
            log.debug("model cache not written to %s: %s", self._dir, e)


class _CachedFileLoader(botocore.loaders.JSONFileLoader):
    """botocore's JSON loader, reading through a ModelCache."""

    def __init__(self, cache: ModelCache):
        self._cache = cache

    def load_file(self, file_path):
        for suffix in _SUFFIXES:
            full = file_path + suffix
            data = self._cache.get(full)
            if data is not None:
                return data
            if os.path.isfile(full):
                data = super().load_file(file_path)
                if data is not None:
                    self._cache.put(full, data)
                return data
        return None


class _ServiceNames(list):
    """"s3", and every other service name once anyone asks for one."""

    def __init__(self, full_list):
        super().__init__(["s3"])
        self._full_list = full_list
        self._complete = False

    def __contains__(self, name) -> bool:
        if name == "s3":
            return True
        if not self._complete:
            self[:] = self._full_list()
            self._complete = True
        return super().__contains__(name)


class S3FirstLoader(botocore.loaders.Loader):
    """botocore's model loader; see the module docstring for what it does differently."""

    def __init__(self, search_path: str | None = None, cache: ModelCache | None = None):
        paths = [os.path.expanduser(p) for p in search_path.split(os.pathsep)] if search_path else None
        self.model_cache = cache or ModelCache(cache_dir())
        super().__init__(extra_search_paths=paths, file_loader=_CachedFileLoader(self.model_cache))

    def list_available_services(self, type_name):
        return _ServiceNames(lambda: super(S3FirstLoader, self).list_available_services(type_name))
