"""repack.lock_timeout's meaning (docs/configuration.md) must say what the leftover drop really does:
it keeps its own short lock_timeout, so a drop queued for ACCESS EXCLUSIVE never stalls readers for long."""

from __future__ import annotations

import dataclasses
import inspect

from agent.core.config.schema import RepackConfig
from agent.repack import cleanup


def test_the_lock_timeout_doc_states_the_leftover_drops_own_bounds() -> None:
    text = next(f for f in dataclasses.fields(RepackConfig) if f.name == "lock_timeout").metadata["doc"]
    assert f"at most {cleanup.LOCK_TIMEOUT * 1000:.0f} ms" in text, text
    assert f"at least {cleanup.FIRST_GAP} s apart" in text, text
    # the drop takes no configured lock_timeout: were one plumbed in, the doc above would be wrong
    assert not {"lock_timeout", "config", "rc"} & set(inspect.signature(cleanup.drop).parameters)
    assert not {"lock_timeout", "config", "rc"} & set(inspect.signature(cleanup.sweep).parameters)
