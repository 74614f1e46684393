"""Bearer-token checks of the HTTP API; the token file is re-read when it changes (rotation without restarts)."""

from __future__ import annotations

import hmac
import logging
import os
from typing import Optional

from qadwh_ray.serving.config import AppArgs, read_token
from qadwh_ray.serving.errors import ApiError

__all__ = ["BearerAuth"]

log = logging.getLogger("ray.serve")


class BearerAuth:
    def __init__(self, args: AppArgs):
        self.args = args
        self._mtime = None
        self.token = read_token(args)

    def current(self) -> Optional[str]:
        """The token now (None: auth is off)."""
        f = self.args.auth_token_file
        if f:
            try:
                m = os.stat(f).st_mtime_ns
            except OSError:
                return self.token  # keep the last good token
            if m != self._mtime:
                try:
                    self.token = read_token(self.args)
                    self._mtime = m
                except RuntimeError as exc:
                    log.warning("auth token file: %s (keeping the previous token)", exc)
        return self.token

    def check(self, headers) -> None:
        """Refuse a request whose ``Authorization`` header lacks the token (when one is configured)."""
        token = self.current()
        if token is None:
            return
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "unauthorized", "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})

    def check_write(self, headers, disabled: str) -> None:
        """Writes need auth configured: without a token they are refused (``disabled`` says why), not open."""
        if self.current() is None:
            raise ApiError(403, "forbidden", disabled)
        self.check(headers)
