"""InMemoryKeyStore: wrapped data keys in a dict (an `encryption.KeyStore` for tests and
single-process apps; nothing survives the process)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence


class InMemoryKeyStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, str] = {}  # data key ID -> wrapped key
        self._subjects: dict[str, str] = {}  # subject -> data key ID
        self._forgotten: dict[str, int] = {}  # subject -> keys destroyed
        self._version = 0

    def subject_key(self, subject: str) -> tuple[str, str] | None:
        with self._lock:
            key_id = self._subjects.get(subject)
            return None if key_id is None else (key_id, self._keys[key_id])

    def create_key(self, subject: str, key_id: str, wrapped: str) -> tuple[str, str]:
        with self._lock:
            if subject not in self._subjects:
                self._subjects[subject] = key_id
                self._keys[key_id] = wrapped
            known = self._subjects[subject]
            return known, self._keys[known]

    def data_keys(self, key_ids: Sequence[str]) -> list[str | None]:
        with self._lock:
            return [self._keys.get(key_id) for key_id in key_ids]

    def forget(self, subject: str) -> int:
        with self._lock:
            key_id = self._subjects.pop(subject, None)
            if key_id is not None:
                del self._keys[key_id]
                self._forgotten[subject] = self._forgotten.get(subject, 0) + 1
                self._version += 1
            return self._forgotten.get(subject, 0)

    def version(self) -> int:
        return self._version

    def wrapped_keys(self) -> Iterator[tuple[str, str]]:
        with self._lock:
            found = list(self._keys.items())
        yield from found

    def rewrap(self, key_id: str, old: str, new: str) -> bool:
        with self._lock:
            if self._keys.get(key_id) != old:
                return False
            self._keys[key_id] = new
            return True
