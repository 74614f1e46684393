"""A real S3-compatible server for the tests.

moto's standalone server runs in a thread and is spoken to over HTTP on
127.0.0.1, exactly like any S3 endpoint: nothing is monkeypatched in-process,
so pyarrow, boto3, Ray Data and Ray Train all exercise their real S3 clients.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import pytest

_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
_DROP = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE")


@dataclass
class S3Server:
    """Handle on the running server: its endpoint URL and a bucket helper."""

    endpoint: str
    buckets: list = field(default_factory=list)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name when none is given) and return its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    """Session-wide moto S3 server on 127.0.0.1 with the AWS_* environment
    pointing at it (restored afterwards)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in (*_ENV, *_DROP, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")}
    os.environ.update(_ENV)
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    for k in _DROP:
        os.environ.pop(k, None)
    try:
        yield S3Server(endpoint=endpoint)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
