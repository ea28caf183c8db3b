"""What client-side encryption costs: client CPU seconds per GiB for put and cat, with and
without --encrypt-key-file, against a local S3 server this script starts.

    python bench/crypto_cost.py [--size 512M] [--reps 3]

Each row runs the real command (`python -m s3pipefs put|cat`) with its output to
/dev/null and charges it the user+sys CPU of that child alone (the server is another
process tree), reported per GiB of payload; the median of --reps runs. Wall time is
shown too, but on a loopback server it mostly measures the server.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from s3pipefs.config import S3Config, parse_size
from s3pipefs.s3 import Store
from s3pipefs.server import LocalServer

GiB = 1 << 30


def child_cpu(argv: list[str], env: dict, stdin, stdout) -> tuple[float, float]:
    """(user+sys CPU seconds, wall seconds) of one command, measured on the child alone."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run(argv, env=env, stdin=stdin, stdout=stdout, check=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="512M", help="payload per run (default 512M)")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    size = parse_size(a.size)
    with tempfile.TemporaryDirectory(prefix="crypto-cost-") as tmp:
        data = os.path.join(tmp, "data")
        with open(data, "wb") as f:  # incompressible, as most data worth encrypting is
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))
        keyfile = os.path.join(tmp, "key")
        with open(os.open(keyfile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(os.urandom(32).hex())
        server = LocalServer(os.path.join(tmp, "s3")).start()
        try:
            os.environ.update(server.env())  # for this process's store and the commands alike
            env = dict(os.environ)
            cmd = [sys.executable, "-m", "s3pipefs"]
            Store(S3Config(endpoint_url=server.endpoint)).create_bucket("bench")
            print(f"{size / (1 << 20):.0f} MiB per run, median of {a.reps}; client CPU seconds per GiB")
            print(f"{'operation':<22} {'CPU s/GiB':>10} {'wall s':>8}")
            for label, extra in (("plain", []), ("encrypted", ["--encrypt-key-file", keyfile])):
                url = f"s3://bench/{label}"
                rows = {"put": [], "cat": []}
                for _ in range(a.reps):
                    with open(data, "rb") as src:
                        rows["put"].append(child_cpu(cmd + ["put", "-q", *extra, url], env, src, subprocess.DEVNULL))
                    with open(os.devnull, "wb") as out:
                        rows["cat"].append(child_cpu(cmd + ["cat", "-q", *extra, url], env, subprocess.DEVNULL,
                                                     out))
                for op, runs in rows.items():
                    cpu = statistics.median(c for c, _ in runs) * GiB / size
                    wall = statistics.median(w for _, w in runs)
                    print(f"{op + ' ' + label:<22} {cpu:>10.2f} {wall:>8.2f}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
