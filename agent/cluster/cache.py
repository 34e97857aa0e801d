"""Revision bookkeeping of the watched prefix, without I/O.

A key's last applied mod_revision (deletions kept as tombstones) decides whether a change is
new, so a replay after a resume, or a listing older than an event already seen, changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.etcd.keys import KeyValue


@dataclass(frozen=True, slots=True)
class KeyChange:
    key: str
    old: str | None
    new: str | None
    revision: int


@dataclass
class KeyCache:
    revision: int = 0  # everything up to here has been applied
    _seen: dict[str, KeyValue] = field(default_factory=dict)

    def value(self, key: str) -> str | None:
        kv = self._seen.get(key)
        return kv.value if kv else None

    def mod_revision(self, key: str) -> int:
        """The last applied mod_revision of `key` (a deletion's included); 0 if never seen."""
        kv = self._seen.get(key)
        return kv.mod_revision if kv else 0

    def items_under(self, prefix: str) -> dict[str, str]:
        return {k: kv.value for k, kv in self._seen.items() if k.startswith(prefix) and kv.value is not None}

    def apply(self, kv: KeyValue) -> KeyChange | None:
        old = self._seen.get(kv.key)
        if old is not None and old.mod_revision >= kv.mod_revision:
            return None  # replay: already reported
        self._seen[kv.key] = kv
        self.revision = max(self.revision, kv.mod_revision)
        old_value = old.value if old else None
        if old_value == kv.value and old is not None:
            return None  # rewritten with the same value: not a change of state
        return KeyChange(kv.key, old_value, kv.value, kv.mod_revision)

    def sync(self, revision: int, listing: list[KeyValue]) -> list[KeyChange]:
        """Apply a full listing taken at `revision`: what changed while we were away.
        Keys absent from the listing were deleted at some point up to `revision`."""
        if revision < self.revision:
            return []  # an older view than what we already applied
        changes = []
        present = {kv.key for kv in listing}
        for kv in listing:
            ch = self.apply(kv)
            if ch:
                changes.append(ch)
        for key, kv in list(self._seen.items()):
            if key not in present and kv.value is not None:
                ch = self.apply(KeyValue(key, None, revision))
                if ch:
                    changes.append(ch)
        self.revision = revision
        return changes
