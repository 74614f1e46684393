"""Shared pytest fixtures. The S3 server fixture lives in fixtures_s3.py."""

pytest_plugins = ["fixtures_s3"]
