"""Encryption of personal fields (crypto-shredding): a data key per subject, wrapped by a
master key, and AES-GCM on each personal field of a content.

- Master keys: 32 random bytes as base64 (`es-workers keys new`). The current one wraps new
  data keys; older ones (`ES_ENCRYPTION_KEYS`) still unwrap until `es-workers keys rotate`
  re-wraps every data key with the current one. A master key's ID is a hash of it.
- Data keys: 32 random bytes per subject, stored wrapped as
  `<master key ID>:<nonce b64>:<ciphertext b64>` under a random data key ID (the ID is the
  associated data, so a wrapped key cannot be moved to another ID).
- The personal fields of one content are sealed together: removed from its JSON and stored
  as one more key, `"_personal": "es2:<data key ID>:<b64 of nonce + ciphertext>"`, the
  ciphertext being AES-GCM of the JSON object of those fields (associated data
  `es2:<data key ID>`, a random 96-bit nonce each). The rest of the content stays plain
  JSON. One AES-GCM call and one base64 per event instead of one per field.
- Events written before that hold each personal field as the JSON string `es1:<data key
  ID>:<nonce b64>:<ciphertext b64>` (AES-GCM of the field's JSON value, associated data
  `es1:<data key ID>`); they still read, and forget and rotation treat both alike.
- Forgetting a subject destroys its data key: its fields then read as placeholders
  (`es_workers.personal`) and the event is `forgotten`.

Data keys are cached per process (LRU, `CACHE_SIZE`). A forget raises a version number
where keys are stored; a process checks it when a read begins (one round trip per page of
events that hold personal fields, none otherwise) and drops its cache when it moved, so once
`forget` returns no read that begins anywhere decrypts the subject's fields again. A write
trusts its cached key: one racing a forget in another process may encrypt with the key just
destroyed, and those fields then read as forgotten.

Nothing here does I/O: `es_workers.keyring` finds the keys, in a `KeyStore` (memory,
Redis) that keeps them wrapped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic_core import from_json, to_json

from .errors import ConfigurationError, EsError
from .event import Content, Event
from .personal import PersonalFields, mark_forgotten, personal_fields

try:  # the `personal` extra
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:  # pragma: no cover - checked when a master key is configured
    AESGCM = None  # type: ignore[assignment,misc]
    InvalidTag = ValueError  # type: ignore[assignment,misc]

ENVELOPE = "es1"
"""The prefix of a personal field sealed on its own (events written before `SEALED`)."""
_ENVELOPE_START = f"{ENVELOPE}:"
SEALED = "es2"
"""The prefix of a content's personal fields sealed together."""
SEALED_KEY = "_personal"
"""The content JSON's key holding its sealed personal fields (no pydantic field starts with
an underscore)."""
_SEALED_START = f"{SEALED}:"
_SEALED_KEY_JSON = f'"{SEALED_KEY}":"'.encode()
_SEALED_AT = _SEALED_KEY_JSON + _SEALED_START.encode()
KEY_BYTES = 32
NONCE_BYTES = 12
CACHE_SIZE = 10_000
"""Data keys (and subjects' key IDs) a process keeps unwrapped, least recently used out."""
KEY_ID = re.compile(rb'"es[12]:([A-Za-z0-9_-]{1,64}):')
_NONCE_BLOCK = 256
"""Nonces drawn from the system per `os.urandom` call (one call per event cost ~0.7 us)."""


class EncryptionError(EsError):
    """Personal data cannot be encrypted or decrypted: no master key, a data key wrapped
    by a master key not configured, or a ciphertext that does not authenticate."""


def new_master_key() -> str:
    """A fresh master key, as `ES_ENCRYPTION_KEY` takes it."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def data_cipher(data_key: bytes) -> Any:
    """The AES-GCM cipher of an unwrapped data key."""
    return AESGCM(data_key)


# Random nonces drawn in blocks. `list.pop` is atomic, so threads never take the same one;
# a child process drops what it inherited (it would repeat its parent's nonces).
_nonces: list[bytes] = []
os.register_at_fork(after_in_child=_nonces.clear)


def _nonce() -> bytes:
    """A fresh random 96-bit nonce."""
    try:
        return _nonces.pop()
    except IndexError:
        block = os.urandom(NONCE_BYTES * _NONCE_BLOCK)
        _nonces.extend([block[at:at + NONCE_BYTES]
                        for at in range(0, len(block), NONCE_BYTES)])
        return _nonces.pop()


def is_sealed(data: str | bytes) -> bool:
    """Whether stored content JSON holds encrypted personal fields (either form)."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return '"es1:' in text or f'"{SEALED_KEY}":"es2:' in text


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
        """The data key encrypted with the current master key, as stored."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self.current.aead.encrypt(nonce, data_key, key_id.encode())
        return f"{self.current.key_id}:{_b64(nonce)}:{_b64(sealed)}"

    def unwrap(self, key_id: str, wrapped: str) -> bytes:
        """The data key a `wrap` stored, with whichever configured master key wrapped it;
        EncryptionError naming the key when none is configured or it was altered."""
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
        """Whether the current master key wrapped it (`keys rotate` skips it)."""
        return wrapped.partition(":")[0] == self.current.key_id


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
        # The subject last sealed for, with the cache generation it was found in, its key ID,
        # AES-GCM and associated data: the events of a write usually share their subject.
        # Any drop of the cache (a forget) moves the generation and so retires it.
        self._last: tuple[str, int, str, Any, bytes] = ("", -1, "", None, b"")

    def seal(self, event: Event, fields: PersonalFields, values: dict[str, Any],
             read_back_from: int) -> bytes:
        """The stored JSON of a content's JSON-ready `values` (the serializer's
        `to_python(mode="json")`, consumed), its personal fields sealed together under
        `SEALED_KEY`. Raises ValueError if that cannot be encoded, or if it would not read
        back (checked from `read_back_from` bytes)."""
        if SEALED_KEY in values:  # an extra field of that name: it would be taken as sealed
            raise EncryptionError(f"{type(event.content).__qualname__} holds a field named "
                                  f"{SEALED_KEY!r}, which es_workers keeps for personal data")
        secret = {name: values.pop(name) for name in fields.names if name in values}
        # infinities and NaN as the class's own JSON writes them (to_python keeps floats)
        inf_nan = type(event.content).model_config.get("ser_json_inf_nan", "null")
        rest = to_json(values, inf_nan_mode=inf_nan)
        if not secret:
            return rest
        plain = to_json(secret, inf_nan_mode=inf_nan)
        if len(rest) + len(plain) >= read_back_from:
            from_json(rest, cache_strings=False)
            from_json(plain, cache_strings=False)
        subject = self.subject(event.content, fields, event.entity_id)
        last_subject, generation, key_id, aead, start = self._last
        if subject != last_subject or generation != self.keys.cache.generation:
            generation = self.keys.cache.generation
            key_id, aead = self.keys.for_subject(subject)
            start = f"{_SEALED_START}{key_id}".encode()
            self._last = (subject, generation, key_id, aead, start)
        sealed = aead.encrypt(nonce := _nonce(), plain, start)
        # the envelope (base64: nothing to escape) goes last, where `_opened` looks for it
        return b"".join((rest[:-1], b"," if len(rest) > 2 else b"", _SEALED_KEY_JSON, start,
                         b":", binascii.b2a_base64(nonce + sealed, newline=False), b'"}'))

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
        whether a key was gone.

        The usual stored form ends with the sealed fields (`seal` adds them last): their
        decrypted JSON object is spliced in their place, without decoding and encoding the
        rest. Anything else (fields sealed one by one, a key gone, fields written in clear
        before they were personal) goes through the decoded values."""
        raw = data.encode() if isinstance(data, str) else data
        at = raw.rfind(_SEALED_AT)
        if at > 0 and raw.endswith(b'"}') and (raw[at - 1] == ord(",") or at == 1):
            envelope = raw[at + len(_SEALED_AT) - len(_SEALED_START):-2]
            if b'"' not in envelope and b"\\" not in envelope:
                plain = self._decrypt_sealed(envelope.decode())
                if plain is not None:
                    if raw[at - 1] == ord("{"):  # nothing else in the content
                        return plain, False
                    if plain == b"{}":
                        return raw[:at - 1] + b"}", False
                    return raw[:at - 1] + b"," + plain[1:], False
        return self._opened_values(fields, raw)

    def _opened_values(self, fields: PersonalFields, data: bytes) -> tuple[bytes, bool]:
        values = from_json(data)
        forgotten = False
        if not isinstance(values, dict):
            return data, False  # pydantic says
        sealed = values.pop(SEALED_KEY, None)
        if isinstance(sealed, str) and sealed.startswith(_SEALED_START):
            plain = self._decrypt_sealed(sealed)
            if plain is None:
                forgotten = True
                for name in fields.names:
                    if name not in values:
                        values[name] = from_json(fields.placeholders[name])
            else:
                values.update(from_json(plain))
        elif sealed is not None:
            values[SEALED_KEY] = sealed  # not ours: pydantic says
        for name in fields.names:
            value = values.get(name)
            if not (isinstance(value, str) and value.startswith(_ENVELOPE_START)):
                continue  # written in clear before the field was personal, or sealed
            plain = self._decrypt(value)
            if plain is None:
                forgotten, plain = True, fields.placeholders[name]
            values[name] = from_json(plain)
        return to_json(values, inf_nan_mode="constants"), forgotten

    def _decrypt_sealed(self, envelope: str) -> bytes | None:
        """The JSON object of a content's sealed personal fields, or None: key destroyed."""
        try:
            _, key_id, blob = envelope.split(":")
            nonce_sealed = _unb64(blob)
        except (ValueError, binascii.Error):
            raise EncryptionError("a content holds malformed sealed personal fields") from None
        aead = self.keys.for_id(key_id)
        if aead is None:
            return None
        try:
            plain: bytes = aead.decrypt(nonce_sealed[:NONCE_BYTES], nonce_sealed[NONCE_BYTES:],
                                        f"{_SEALED_START}{key_id}".encode())
        except (InvalidTag, ValueError):
            raise EncryptionError(
                f"personal fields encrypted with data key {key_id} do not decrypt: they were "
                "altered") from None
        return plain

    def _decrypt(self, envelope: str) -> bytes | None:
        """The JSON of one personal field sealed on its own (the `es1` form)."""
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
        if isinstance(value, bytes) and (b'"es1:' in value or b'"es2:' in value):
            found.update(match.decode() for match in KEY_ID.findall(value))
    return found


def subjects_of(events: Iterable[Event]) -> set[str]:
    """The subjects whose data keys encrypting the events needs."""
    found = set()
    for event in events:
        fields = personal_fields(type(event.content))
        if fields.names:
            found.add(FieldCipher.subject(event.content, fields, event.entity_id))
    return found
