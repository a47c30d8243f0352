"""The keyring of personal data: data keys per subject, made on first use, unwrapped with
the master keys and cached (`encryption.KeyCache`), destroyed by a forget, re-wrapped by a
rotation. A `KeyStore` (memory, Redis) keeps the wrapped keys; `Keyring` reads it
synchronously, `AsyncKeyring` ahead of decoding for the asyncio storages.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, Protocol

from .encryption import (
    CACHE_SIZE,
    KEY_BYTES,
    EncryptionError,
    KeyCache,
    MasterKeys,
    data_cipher,
    key_ids_in,
)
from .names import check_entity_id


class KeyStore(Protocol):
    """Where wrapped data keys live (memory, Redis). Every operation is atomic."""

    def subject_key(self, subject: str) -> tuple[str, str] | None:
        """The subject's (data key ID, wrapped key), or None."""
        ...

    def create_key(self, subject: str, key_id: str, wrapped: str) -> tuple[str, str]:
        """Records the key for the subject unless it has one; returns the one it has."""
        ...

    def data_keys(self, key_ids: Sequence[str]) -> list[str | None]:
        """The wrapped keys of the IDs (None: destroyed, or never made)."""
        ...

    def forget(self, subject: str) -> int:
        """Destroys the subject's data key, if any, and records it (raising the version).
        Returns how many keys of the subject were destroyed so far."""
        ...

    def version(self) -> int:
        """A number that moves whenever a key is destroyed."""
        ...

    def wrapped_keys(self) -> Iterator[tuple[str, str]]:
        """Every (data key ID, wrapped key)."""
        ...

    def rewrap(self, key_id: str, old: str, new: str) -> bool:
        """Replaces the wrapped key if it is still `old`."""
        ...


class Keyring:
    """Data keys of a synchronous `KeyStore`, cached: what `FieldCipher` asks for."""

    def __init__(self, master: MasterKeys, store: KeyStore, cache_size: int = CACHE_SIZE):
        self.master = master
        self.store = store
        self.cache = KeyCache(cache_size)
        # Reads begun, and the count when the version was last checked: a check made after
        # a read began covers it. Counted under a lock (threads read at once), checked
        # without: both only grow, so equal counts mean no read began since the check.
        self._begun = 0
        self._checked = -1
        self._counting = threading.Lock()

    def begin_read(self) -> None:
        with self._counting:
            self._begun += 1

    def check(self) -> None:
        """Drops the cache if a key was destroyed since the last read began."""
        self._check_version()

    def _check_version(self) -> None:
        begun = self._begun
        if self._checked != begun:
            self.cache.seen_version(self.store.version())
            with self._counting:
                self._checked = max(self._checked, begun)

    def for_subject(self, subject: str) -> tuple[str, Any]:
        """The subject's (data key ID, AESGCM), made on its first personal field."""
        key_id = self.cache.subjects.get(subject)
        if key_id is not None:
            aead = self.cache.key(key_id)[1]
            if aead is not None:
                return key_id, aead
        check_subject(subject)
        generation = self.cache.generation
        stored = self.store.subject_key(subject)
        if stored is None:
            new_id = secrets.token_urlsafe(12)
            stored = self.store.create_key(
                subject, new_id, self.master.wrap(new_id, os.urandom(KEY_BYTES)))
        key_id, wrapped = stored
        aead = data_cipher(self.master.unwrap(key_id, wrapped))
        self.cache.put_key(key_id, aead, generation)
        self.cache.put_subject(subject, key_id, generation)
        return key_id, aead

    def for_id(self, key_id: str) -> Any:
        """The AESGCM of a data key ID, or None once destroyed."""
        self._check_version()
        found, aead = self.cache.key(key_id)
        if found:
            return aead
        generation = self.cache.generation
        wrapped = self.store.data_keys([key_id])[0]
        aead = None if wrapped is None else data_cipher(self.master.unwrap(key_id, wrapped))
        self.cache.put_key(key_id, aead, generation)
        return aead

    def forget(self, subject: str) -> int:
        """Destroys the subject's data key; returns how many of its keys were destroyed."""
        check_subject(subject)
        count = self.store.forget(subject)
        self.cache.seen_version(self.store.version())
        return count

    def rotate(self) -> int:
        """Re-wraps every data key not wrapped by the current master key; returns how many."""
        done = 0
        for key_id, wrapped in self.store.wrapped_keys():
            if self.master.is_current(wrapped):
                continue
            data_key = self.master.unwrap(key_id, wrapped)
            if self.store.rewrap(key_id, wrapped, self.master.wrap(key_id, data_key)):
                done += 1
        return done


def check_subject(subject: str) -> str:
    """A subject is named like an entity ID (its forget notices are an entity's events)."""
    if not isinstance(subject, str):
        raise TypeError(f"a subject is a str, got {type(subject).__name__}")
    return check_entity_id(subject)


class AsyncKeyStore(Protocol):
    """`KeyStore`, awaited."""

    async def subject_key(self, subject: str) -> tuple[str, str] | None: ...

    async def create_key(self, subject: str, key_id: str, wrapped: str) -> tuple[str, str]: ...

    async def data_keys(self, key_ids: Sequence[str]) -> list[str | None]: ...

    async def forget(self, subject: str) -> int: ...

    async def version(self) -> int: ...

    def wrapped_keys(self) -> AsyncIterator[tuple[str, str]]: ...

    async def rewrap(self, key_id: str, old: str, new: str) -> bool: ...


class AsyncKeyring:
    """`Keyring` of an `AsyncKeyStore`. Decoding is synchronous, so the storage awaits
    `prepare_read` with a page's stored values before decoding it (that checks the version
    and loads the keys they name), and `prepare_write` before encoding; `FieldCipher` then
    finds every key in the cache."""

    def __init__(self, master: MasterKeys, store: AsyncKeyStore,
                 cache_size: int = CACHE_SIZE) -> None:
        self.master = master
        self.store = store
        self.cache = KeyCache(cache_size)

    def begin_read(self) -> None:
        pass  # prepare_read checks the version

    def check(self) -> None:
        pass  # prepare_read did

    async def prepare_read(self, values: Iterable[Any]) -> None:
        key_ids = key_ids_in(values)
        if not key_ids:
            return
        self.cache.seen_version(await self.store.version())
        while True:  # until no other task dropped the cache while the keys were fetched
            generation = self.cache.generation
            missing = [key_id for key_id in key_ids if key_id not in self.cache.keys]
            if not missing:
                return
            for key_id, wrapped in zip(missing, await self.store.data_keys(missing),
                                       strict=True):
                self.cache.put_key(key_id, None if wrapped is None else
                                   data_cipher(self.master.unwrap(key_id, wrapped)), generation)

    async def prepare_write(self, subjects: Iterable[str]) -> None:
        """Caches the subjects' data keys (made if missing); the caller encodes before it
        awaits anything else."""
        wanted = list(subjects)
        while not all(self._has_subject(subject) for subject in wanted):
            await self._prepare_subjects(wanted)

    def _has_subject(self, subject: str) -> bool:
        key_id = self.cache.subjects.get(subject)
        return key_id is not None and self.cache.key(key_id)[1] is not None

    async def _prepare_subjects(self, subjects: list[str]) -> None:
        for subject in subjects:
            if self._has_subject(subject):
                continue
            check_subject(subject)
            generation = self.cache.generation
            stored = await self.store.subject_key(subject)
            if stored is None:
                new_id = secrets.token_urlsafe(12)
                stored = await self.store.create_key(
                    subject, new_id, self.master.wrap(new_id, os.urandom(KEY_BYTES)))
            key_id, wrapped = stored
            self.cache.put_key(key_id, data_cipher(self.master.unwrap(key_id, wrapped)), generation)
            self.cache.put_subject(subject, key_id, generation)

    def for_subject(self, subject: str) -> tuple[str, Any]:
        key_id = self.cache.subjects.get(subject)
        aead = self.cache.key(key_id)[1] if key_id is not None else None
        if key_id is None or aead is None:
            raise EncryptionError(f"no data key prepared for subject {subject!r}")
        return key_id, aead

    def for_id(self, key_id: str) -> Any:
        found, aead = self.cache.key(key_id)
        if not found:
            raise EncryptionError(f"data key {key_id} was not prepared for this read")
        return aead

    async def forget(self, subject: str) -> int:
        check_subject(subject)
        count = await self.store.forget(subject)
        self.cache.seen_version(await self.store.version())
        return count

    async def rotate(self) -> int:
        """`Keyring.rotate`, awaited."""
        done = 0
        async for key_id, wrapped in self.store.wrapped_keys():
            if self.master.is_current(wrapped):
                continue
            data_key = self.master.unwrap(key_id, wrapped)
            if await self.store.rewrap(key_id, wrapped, self.master.wrap(key_id, data_key)):
                done += 1
        return done
