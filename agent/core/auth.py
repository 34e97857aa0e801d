"""HTTP basic auth that a flood cannot turn against the agent.

bcrypt is slow on purpose, so checks run in worker threads; they get their own one-thread
limiter, never anyio's default one that etcd calls and repack lock refreshes share. A good
check is cached for a while (sliding), keyed by a keyed hash of the credentials, never the
password. Failures spend a small token bucket: once it is empty, checks are refused (429)
without hashing until it refills, and so are checks that would queue behind too many others.
An unknown user is checked against a configured hash like a known one and then refused, so
the answer's path and cost do not tell which user names exist.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os

import anyio

CACHE_TTL = 120.0     # seconds a good check is trusted again without hashing (refreshed on use)
CACHE_MAX = 1024
QUEUE_MAX = 8         # checks waiting for the hash thread; more are refused at once
FAIL_RATE = 4.0       # failed checks per second allowed on average ...
FAIL_BURST = 8.0      # ... and in a burst


class Verdict(enum.Enum):
    OK = "ok"
    DENIED = "denied"        # 401
    THROTTLED = "throttled"  # 429: too many failures or checks waiting


class Authenticator:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        # the decoy an unknown user is checked against: a real hash, so the cost is a real one
        self._decoy = next((h for h in users.values() if not h.startswith("sha256:")),
                           next(iter(users.values()), ""))
        self._key = os.urandom(32)
        self._cache: dict[bytes, float] = {}
        self._limiter = anyio.CapacityLimiter(1)
        self._tokens = FAIL_BURST
        self._refilled = 0.0
        self.hashed = 0  # checks that reached the hash (tests and /status)
        self.throttled = 0

    async def check(self, header: str) -> Verdict:
        if not header.startswith("Basic "):
            return Verdict.DENIED
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return Verdict.DENIED
        stored = self.users.get(user)
        target = stored if stored is not None else self._decoy
        now = anyio.current_time()
        key = hmac.digest(self._key, b"\0".join((user.encode(), password.encode(), target.encode())), "sha256")
        if self._cache.get(key, 0.0) > now:
            self._cache[key] = now + CACHE_TTL
            return Verdict.OK
        if not self._take_token(now) or self._limiter.statistics().tasks_waiting >= QUEUE_MAX:
            self.throttled += 1
            return Verdict.THROTTLED
        ok = await self._verify(password, target) and stored is not None
        if ok:
            self._remember(key, now)
            self._tokens = min(FAIL_BURST, self._tokens + 1)  # a good check spent no failure
            return Verdict.OK
        return Verdict.DENIED

    def _take_token(self, now: float) -> bool:
        """Every uncached check takes a token up front (a good one gives it back), so a flood
        of concurrent wrong passwords cannot all slip in before the first one has failed."""
        self._tokens = min(FAIL_BURST, self._tokens + (now - self._refilled) * FAIL_RATE)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    async def _verify(self, password: str, stored: str) -> bool:
        self.hashed += 1
        if stored.startswith("sha256:"):
            return hmac.compare_digest(hashlib.sha256(password.encode()).hexdigest(), stored[7:])
        import bcrypt  # here: a node without basic auth users does not load it (bench/README.md, RSS)

        try:
            return await anyio.to_thread.run_sync(bcrypt.checkpw, password.encode(), stored.encode(),
                                                  limiter=self._limiter)
        except ValueError:  # not a bcrypt hash (config check refuses those; be safe anyway)
            return False

    def _remember(self, key: bytes, now: float) -> None:
        if len(self._cache) >= CACHE_MAX:
            for k in [k for k, t in self._cache.items() if t <= now] or list(self._cache)[:1]:
                del self._cache[k]
        self._cache[key] = now + CACHE_TTL
