"""Encryption of personal fields (crypto-shredding): a data key per subject, wrapped by a
master key, and AES-GCM on each personal field of a content.

- Master keys: 32 random bytes as base64 (`es-workers keys new`). The current one wraps new
  data keys; older ones (`ES_ENCRYPTION_KEYS`) still unwrap until `es-workers keys rotate`
  re-wraps every data key with the current one. A master key's ID is a hash of it.
- Data keys: 32 random bytes per subject, stored wrapped as
  `<master key ID>:<nonce b64>:<ciphertext b64>` under a random data key ID (the ID is the
  associated data, so a wrapped key cannot be moved to another ID).
- A personal field is stored as the JSON string `es1:<data key ID>:<nonce b64>:<ciphertext
  b64>`, the ciphertext being AES-GCM of the field's JSON value (associated data
  `es1:<data key ID>`). The rest of the content stays plain JSON.
- Forgetting a subject destroys its data key: its fields then read as placeholders
  (`es_workers.personal`) and the event is `forgotten`.

Data keys are cached per process (LRU, `CACHE_SIZE`). A forget raises a version number
where keys are stored; a process checks it when a read begins (one round trip per page of
events that hold personal fields, none otherwise) and drops its cache when it moved, so once
`forget` returns no read that begins anywhere decrypts the subject's fields again. A write
trusts its cached key: one racing a forget in another process may encrypt with the key just
destroyed, and those fields then read as forgotten.

Nothing here does I/O: a `KeyStore` (memory, Redis) keeps the wrapped keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic_core import from_json, to_json

from .errors import ConfigurationError, EsError
from .event import Content, Event
from .names import check_entity_id
from .personal import PersonalFields, mark_forgotten, personal_fields

try:  # the `personal` extra
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:  # pragma: no cover - checked when a master key is configured
    AESGCM = None  # type: ignore[assignment,misc]
    InvalidTag = ValueError  # type: ignore[assignment,misc]

ENVELOPE = "es1"
_ENVELOPE_START = f"{ENVELOPE}:"
KEY_BYTES = 32
NONCE_BYTES = 12
CACHE_SIZE = 10_000
"""Data keys (and subjects' key IDs) a process keeps unwrapped, least recently used out."""
KEY_ID = re.compile(rb'"es1:([A-Za-z0-9_-]{1,64}):')


class EncryptionError(EsError):
    """Personal data cannot be encrypted or decrypted: no master key, a data key wrapped
    by a master key not configured, or a ciphertext that does not authenticate."""


def new_master_key() -> str:
    """A fresh master key, as `ES_ENCRYPTION_KEY` takes it."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode()


def _unb64(text: str) -> bytes:
    return binascii.a2b_base64(text, strict_mode=True)


@dataclass(frozen=True)
class MasterKey:
    key_id: str
    aead: Any  # AESGCM

    @classmethod
    def parse(cls, text: str, what: str) -> MasterKey:
        if AESGCM is None:
            raise ConfigurationError(
                "encrypting personal fields needs the cryptography package: "
                "pip install 'es_workers[personal]'")
        try:
            key = _unb64(text.strip())
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_BYTES:  # the message never quotes the key
            raise ConfigurationError(
                f"{what} is not a master key: expected {KEY_BYTES} bytes as base64 (make one "
                "with `es-workers keys new`)")
        return cls(master_key_id(key), AESGCM(key))


def master_key_id(key: bytes) -> str:
    """A master key's ID: a hash of it (recorded with each data key it wraps)."""
    return hashlib.sha256(b"es_workers master key\0" + key).hexdigest()[:16]


class MasterKeys:
    """The current master key (wraps new data keys) and older ones (only unwrap)."""

    def __init__(self, current: str, older: Sequence[str] = ()) -> None:
        self.current = MasterKey.parse(current, "the encryption key")
        self._by_id = {self.current.key_id: self.current}
        for number, text in enumerate(older, start=1):
            key = MasterKey.parse(text, f"older encryption key #{number}")
            self._by_id.setdefault(key.key_id, key)

    def wrap(self, key_id: str, data_key: bytes) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self.current.aead.encrypt(nonce, data_key, key_id.encode())
        return f"{self.current.key_id}:{_b64(nonce)}:{_b64(sealed)}"

    def unwrap(self, key_id: str, wrapped: str) -> bytes:
        try:
            master_id, nonce, sealed = wrapped.split(":")
        except ValueError:
            raise EncryptionError(f"data key {key_id} is stored in an unknown form") from None
        master = self._by_id.get(master_id)
        if master is None:
            raise EncryptionError(
                f"data key {key_id} is wrapped by master key {master_id}, which is not "
                "configured: add it to ES_ENCRYPTION_KEYS")
        try:
            data_key: bytes = master.aead.decrypt(_unb64(nonce), _unb64(sealed), key_id.encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise EncryptionError(f"data key {key_id} does not unwrap with master key "
                                  f"{master_id}: it was altered") from None
        return data_key

    def is_current(self, wrapped: str) -> bool:
        return wrapped.partition(":")[0] == self.current.key_id


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


class KeyCache:
    """Unwrapped data keys by ID, subjects' key IDs and decrypted contents (stored JSON ->
    its JSON decrypted, and whether a key was gone), least recently used out, dropped
    whenever the key store's version moves.

    Decrypting costs two to three times decoding a plain event; a process that reads the
    same events again (hydrating an entity per command) finds them here instead.

    `generation` counts the drops: a caller takes it before asking the key store and puts
    what it found only if no drop came in between (a key fetched just before a forget
    must not enter the cache just after a reader dropped it)."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.keys: OrderedDict[str, Any] = OrderedDict()  # key ID -> AESGCM, or None: gone
        self.subjects: OrderedDict[str, str] = OrderedDict()  # subject -> key ID
        self.opened: OrderedDict[str | bytes, tuple[bytes, bool]] = OrderedDict()
        self.version: int | None = None
        self.generation = 0
        self.lock = threading.Lock()

    def put_opened(self, data: str | bytes, opened: tuple[bytes, bool], generation: int) -> None:
        with self.lock:
            if generation == self.generation:
                self.opened[data] = opened
                if len(self.opened) > self.size:
                    self.opened.popitem(last=False)

    def key(self, key_id: str) -> tuple[bool, Any]:
        """(found, AESGCM or None when destroyed)."""
        keys = self.keys
        try:
            aead = keys[key_id]
            keys.move_to_end(key_id)
        except KeyError:  # not cached, or dropped meanwhile by another thread
            return False, None
        return True, aead

    def put_key(self, key_id: str, aead: Any, generation: int) -> None:
        with self.lock:
            if generation == self.generation:
                self.keys[key_id] = aead
                if len(self.keys) > self.size:
                    self.keys.popitem(last=False)

    def put_subject(self, subject: str, key_id: str, generation: int) -> None:
        with self.lock:
            if generation == self.generation:
                self.subjects[subject] = key_id
                if len(self.subjects) > self.size:
                    self.subjects.popitem(last=False)

    def seen_version(self, version: int) -> None:
        """Drops every key if the store's version moved since the cache was filled."""
        with self.lock:
            if version != self.version:
                self.keys.clear()
                self.subjects.clear()
                self.opened.clear()
                self.version = version
                self.generation += 1


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
        aead = AESGCM(self.master.unwrap(key_id, wrapped))
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
        aead = None if wrapped is None else AESGCM(self.master.unwrap(key_id, wrapped))
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


class KeySource(Protocol):
    cache: KeyCache

    def begin_read(self) -> None: ...

    def check(self) -> None: ...

    def for_subject(self, subject: str) -> tuple[str, Any]: ...

    def for_id(self, key_id: str) -> Any: ...


class FieldCipher:
    """Encrypts the personal fields of a content's JSON, and decrypts them back."""

    def __init__(self, keys: KeySource) -> None:
        self.keys = keys

    def seal(self, event: Event, fields: PersonalFields, data: bytes) -> bytes:
        """The content's JSON `data` with its personal fields encrypted."""
        values = from_json(data)
        subject = self.subject(event.content, fields, event.entity_id)
        key_id, aead = self.keys.for_subject(subject)
        associated = f"{_ENVELOPE_START}{key_id}".encode()
        for name in fields.names:
            if name in values:
                nonce = os.urandom(NONCE_BYTES)
                sealed = aead.encrypt(nonce, to_json(values[name], inf_nan_mode="constants"),
                                      associated)
                values[name] = f"{_ENVELOPE_START}{key_id}:{_b64(nonce)}:{_b64(sealed)}"
        return to_json(values, inf_nan_mode="constants")

    @staticmethod
    def subject(content: Content, fields: PersonalFields, entity_id: str) -> str:
        if fields.subject_field is None:
            return entity_id
        return str(getattr(content, fields.subject_field))

    def open(self, cls: type[Content], fields: PersonalFields, data: str | bytes) -> Content:
        """The content of stored JSON whose personal fields may be encrypted: decrypted,
        or placeholders (the content then marked forgotten) where the key is gone."""
        keys = self.keys
        keys.check()
        generation = keys.cache.generation
        opened = keys.cache.opened.get(data)
        if opened is None:
            opened = self._opened(fields, data)
            keys.cache.put_opened(data, opened, generation)
        content: Content = cls.__pydantic_validator__.validate_json(opened[0])
        if opened[1]:
            mark_forgotten(content)
        return content

    def _opened(self, fields: PersonalFields, data: str | bytes) -> tuple[bytes, bool]:
        """The stored JSON with its personal fields decrypted (or their placeholders), and
        whether a key was gone. (Splicing the decrypted JSON into the stored text instead
        of encoding again measured no faster: decrypting is most of the time.)"""
        values = from_json(data)
        forgotten = False
        if not isinstance(values, dict):
            return data.encode() if isinstance(data, str) else data, False  # pydantic says
        for name in fields.names:
            value = values.get(name)
            if not (isinstance(value, str) and value.startswith(_ENVELOPE_START)):
                continue  # written before the field was personal: plain
            plain = self._decrypt(value)
            if plain is None:
                forgotten, plain = True, fields.placeholders[name]
            values[name] = from_json(plain)
        return to_json(values, inf_nan_mode="constants"), forgotten

    def _decrypt(self, envelope: str) -> bytes | None:
        try:
            _, key_id, nonce, sealed = envelope.split(":")
        except ValueError:
            raise EncryptionError("a personal field holds a malformed ciphertext") from None
        aead = self.keys.for_id(key_id)
        if aead is None:
            return None
        try:
            plain: bytes = aead.decrypt(_unb64(nonce), _unb64(sealed),
                                        f"{_ENVELOPE_START}{key_id}".encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise EncryptionError(
                f"a personal field encrypted with data key {key_id} does not decrypt: it "
                "was altered") from None
        return plain


def key_ids_in(values: Iterable[Any]) -> set[str]:
    """The data key IDs named by the envelopes in stored JSON values (bytes or str)."""
    found: set[str] = set()
    for value in values:
        if isinstance(value, str):
            value = value.encode()
        if isinstance(value, bytes) and b'"es1:' in value:
            found.update(match.decode() for match in KEY_ID.findall(value))
    return found


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
                                   AESGCM(self.master.unwrap(key_id, wrapped)), generation)

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
            self.cache.put_key(key_id, AESGCM(self.master.unwrap(key_id, wrapped)), generation)
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


def subjects_of(events: Iterable[Event]) -> set[str]:
    """The subjects whose data keys encrypting the events needs."""
    found = set()
    for event in events:
        fields = personal_fields(type(event.content))
        if fields.names:
            found.add(FieldCipher.subject(event.content, fields, event.entity_id))
    return found
