"""Basic auth under a flood: own hash limiter, cached good checks, throttled failures, and the
same path for unknown and known users."""

from __future__ import annotations

import base64

import anyio
import bcrypt
import pytest

from agent.core.auth import FAIL_BURST, Authenticator, Verdict

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


HASH = bcrypt.hashpw(b"right", bcrypt.gensalt(8)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The real bcrypt.checkpw, with the hashes it was asked to check recorded."""
    seen: list[bytes] = []
    real = bcrypt.checkpw

    def spy(pw: bytes, hashed: bytes) -> bool:
        seen.append(hashed)
        return real(pw, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", spy)
    return seen


async def test_unknown_and_known_users_cost_the_same_hash(checks: list[bytes]) -> None:
    a = Authenticator({"ops": HASH})
    assert await a.check(basic("nobody", "right")) is Verdict.DENIED  # the decoy's password: still no
    assert await a.check(basic("ops", "wrong")) is Verdict.DENIED
    assert checks == [HASH.encode(), HASH.encode()]


async def test_a_good_check_is_cached_and_a_wrong_password_is_not_taken_from_it(checks: list[bytes]) -> None:
    a = Authenticator({"ops": HASH})
    assert await a.check(basic("ops", "right")) is Verdict.OK
    assert await a.check(basic("ops", "right")) is Verdict.OK
    assert len(checks) == 1
    assert await a.check(basic("ops", "righ")) is Verdict.DENIED
    assert len(checks) == 2
    assert all(b"right" not in k for k in a._cache)  # keyed hashes only


async def test_a_flood_of_wrong_passwords_is_throttled_off_the_default_thread_pool(checks: list[bytes]) -> None:
    a = Authenticator({"ops": HASH})
    assert await a.check(basic("ops", "right")) is Verdict.OK  # a scraper, checked before the flood
    default = anyio.to_thread.current_default_thread_limiter()
    verdicts: list[Verdict] = []
    borrowed: list[float] = []

    async def one(i: int) -> None:
        verdicts.append(await a.check(basic("ops" if i % 2 else f"user{i}", f"guess{i}")))
        borrowed.append(default.borrowed_tokens)

    async with anyio.create_task_group() as tg:
        for i in range(300):
            tg.start_soon(one, i)
        # while the flood is queued, the scraper's cached credentials still pass without a hash
        assert await a.check(basic("ops", "right")) is Verdict.OK
    assert max(borrowed) == 0  # etcd's and repack's threads were never taken
    assert verdicts.count(Verdict.THROTTLED) >= 300 - FAIL_BURST - 1
    assert Verdict.OK not in verdicts
    assert len(checks) <= FAIL_BURST + 2  # the hash ran a handful of times, not 300


async def test_throttled_answers_are_429_on_the_app(checks: list[bytes]) -> None:
    from tests.unit.core.test_http import api, call

    a, _ = api({"ops": HASH})
    codes: list[int] = []

    async def one(i: int) -> None:
        codes.append((await call(a, "/health", {"Authorization": basic("ops", f"x{i}")}))[0])

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(one, i)
    assert set(codes) == {401, 429} and codes.count(429) >= 50 - FAIL_BURST - 1
