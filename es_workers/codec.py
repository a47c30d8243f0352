"""The codec: which Content classes an entity type may hold, and how they are encoded
to JSON and decoded back. Shared by every storage."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, from_json

from .encryption import EncryptionError, FieldCipher, is_sealed
from .errors import (
    DecodeError,
    EventTooLargeError,
    InvalidContentError,
    InvalidPayloadError,
    NotRegisteredError,
    UnknownEventError,
)
from .event import Content, Event
from .names import check_entity_type
from .personal import PersonalFields, personal_fields

DEFAULT_MAX_EVENT_BYTES = 1 << 20
"""An event's largest encoded size (JSON data and metadata) a storage accepts by default."""

READ_BACK_FROM = 402
"""The shortest JSON that pydantic's reader may refuse although its writer wrote it: 201
levels of nesting take 402 bytes of brackets, an integer of 4,301 digits more. Shorter
JSON (the usual event) is stored without reading it back."""


def content_json(event: Event, name: str) -> bytes:
    """The JSON of the event's content, or InvalidContentError if pydantic cannot encode it
    or its JSON reader would refuse what was encoded (the store must never hold an event
    it cannot read)."""
    content = event.content
    try:
        # what model_dump_json does, without its wrapper (~0.3 us) and its decoding to str
        data = content.__pydantic_serializer__.to_json(content)
    except PydanticSerializationError as error:
        raise _invalid(event, name, f"it cannot be encoded as JSON ({error})") from error
    if len(data) >= READ_BACK_FROM:
        try:
            from_json(data, cache_strings=False)
        except ValueError as error:
            raise _invalid(event, name, f"its JSON would not read back ({error})") from error
    if b"NaN" in data or b"Infinity" in data:  # rare: the walk runs only then
        where = non_finite_field(content.model_dump(), ())
        if where is not None:
            raise _invalid(event, name, f"field {where[0]} is {where[1]}, which JSON has no "
                           "number for (store None, or a string)")
    return data


def non_finite_field(value: Any, path: tuple[str, ...]) -> tuple[str, float] | None:
    """The dotted path and value of the first NaN or infinity in dumped content, or None.

    Content is written with NaN and Infinity as bare constants (`ser_json_inf_nan`), so an
    event stored before they were refused still reads back; new ones are refused here:
    other JSON readers (jq, Go, a browser) refuse those constants."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".".join(path) or "(content)", value
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list | tuple) else ())
    for key, item in items:
        found = non_finite_field(item, (*path, str(key)))
        if found is not None:
            return found
    return None


def _invalid(event: Event, name: str, reason: str) -> InvalidContentError:
    return InvalidContentError(event.entity_type, event.entity_id, event.event_number, name,
                               reason)


def check_size(event: Event, name: str, data: bytes, metadata: str, limit: int) -> None:
    """Refuses an event whose JSON `data` and stored `metadata` exceed `limit` bytes."""
    size = len(data) + (len(metadata.encode()) if metadata else 0)
    if size > limit:
        raise EventTooLargeError(event.entity_type, event.entity_id, event.event_number, name,
                                 size, limit)


class ContentRegistry:
    """Maps (entity type, event name) to a Content class; shared by the storages."""

    def __init__(self) -> None:
        self._types: dict[str, dict[str, type[Content]]] = {}
        self._decoders: dict[str, dict[str | bytes, Callable[[str | bytes], Content]]] = {}
        self._personal_types: set[str] = set()  # entity types with classes of personal data
        self.cipher: FieldCipher | None = None
        """Encrypts and decrypts `Personal` fields; None: refuses to write them."""

    def register(self, entity_type: str, *content_types: type[Content]) -> None:
        check_entity_type(entity_type)
        self._decoders.pop(entity_type, None)
        names = self._types.setdefault(entity_type, {})
        for content_type in content_types:
            if not (isinstance(content_type, type) and issubclass(content_type, Content)):
                raise NotRegisteredError(
                    f"cannot register {content_type!r} for {entity_type!r}: "
                    "events must be es_workers.Content subclasses"
                )
            name = content_type.event_name
            known = names.get(name)
            if known is not None and known is not content_type:
                raise NotRegisteredError(
                    f"event name {name!r} of {entity_type!r} is taken by {known.__qualname__}; "
                    f"set a different event_name on {content_type.__qualname__}"
                )
            names[name] = content_type

    def entity_types(self) -> list[str]:
        return sorted(self._types)

    def decoders(self, entity_type: str) -> dict[str | bytes, Callable[[str | bytes], Content]]:
        """JSON decoders of the entity type's Content classes by event name, keyed by str
        and by UTF-8 bytes (the form Redis replies take): the fast path of reading.

        A decoder is the class's pydantic validator itself (what `model_validate_json`
        calls), saving ~0.3 us of wrapper per event; `decode` explains any failure.
        """
        found = self._decoders.get(entity_type)
        if found is None:
            found = {}
            for name, cls in self._types.get(entity_type, {}).items():
                fields = personal_fields(cls)
                validate = cls.__pydantic_validator__.validate_json
                if fields.names:
                    validate = partial(self._open, cls, fields)
                    self._personal_types.add(entity_type)
                found[name] = found[name.encode()] = validate
            self._decoders[entity_type] = found
        if entity_type in self._personal_types and self.cipher is not None:
            self.cipher.keys.begin_read()  # a forget elsewhere must reach this read
        return found

    def _open(self, cls: type[Content], fields: PersonalFields, data: str | bytes) -> Content:
        """The content of stored JSON of a class with personal fields, decrypted."""
        if self.cipher is not None:
            return self.cipher.open(cls, fields, data)
        if is_sealed(data):
            raise EncryptionError(
                f"{cls.__qualname__} holds encrypted personal fields and no master key is "
                "configured: set ES_ENCRYPTION_KEY")
        content: Content = cls.__pydantic_validator__.validate_json(data)
        return content

    def encode(self, entity_type: str, event: Event) -> tuple[str, bytes]:
        """Returns the event's (event name, JSON); refuses content the type cannot read back:
        a class not registered for it (NotRegisteredError), JSON that would not read back
        (InvalidContentError)."""
        content = event.content
        cls = type(content)
        known = self._types.get(entity_type, {}).get(getattr(cls, "event_name", ""))
        if cls is not known or not isinstance(content, Content):
            self._refuse(entity_type, content)
        fields = personal_fields(cls)
        if fields.names:
            return cls.event_name, self.sealed_json(event, cls.event_name, fields)
        return cls.event_name, content_json(event, cls.event_name)

    def sealed_json(self, event: Event, name: str, fields: PersonalFields) -> bytes:
        """`content_json` of a content whose class (`encode` accepted it) has personal
        `fields`, those encrypted; refused without a master key.

        The content is serialized to JSON-ready values rather than to JSON: the personal
        ones leave them before anything is encoded (no JSON decoded again)."""
        content = event.content
        if self.cipher is None:
            raise EncryptionError(
                f"{type(content).__qualname__} has personal fields "
                f"({', '.join(fields.names)}) and no master key is configured to encrypt "
                "them: set ES_ENCRYPTION_KEY (`es-workers keys new` makes one); nothing was "
                "written")
        try:
            values = content.__pydantic_serializer__.to_python(content, mode="json")
        except ValueError as error:  # PydanticSerializationError; too deep: ValueError
            raise _invalid(event, name, f"it cannot be encoded as JSON ({error})") from error
        try:
            return self.cipher.seal(event, fields, values, READ_BACK_FROM)
        except EncryptionError:
            raise
        except ValueError as error:  # to_json's PydanticSerializationError, from_json's
            raise _invalid(event, name, f"its JSON cannot be encoded or would not read back "
                           f"({error})") from error

    @staticmethod
    def _refuse(entity_type: str, content: object) -> NoReturn:
        if not isinstance(content, Content):
            raise NotRegisteredError(
                f"cannot write {content!r} to {entity_type!r}: events must be "
                "es_workers.Content instances"
            )
        cls = type(content)
        raise NotRegisteredError(
            f"{cls.__qualname__} (event name {cls.event_name!r}) is not registered for "
            f"{entity_type!r}; add it to Store(events={{{entity_type!r}: [...]}})"
        )

    def decode(
        self,
        *,
        key: str,
        entity_type: str,
        entity_id: str,
        event_number: int,
        name: str,
        data: str | bytes,
    ) -> Content:
        cls = self._types.get(entity_type, {}).get(name)
        if cls is None:
            raise UnknownEventError(
                name=name,
                key=key,
                entity_type=entity_type,
                entity_id=entity_id,
                event_number=event_number,
            )
        fields = personal_fields(cls)
        try:
            if fields.names:
                if self.cipher is not None:
                    self.cipher.keys.begin_read()
                return self._open(cls, fields, data)
            return cls.model_validate_json(data)
        except EncryptionError as error:
            raise DecodeError(
                f"stored {name!r} payload: {error}", key=key, entity_type=entity_type,
                entity_id=entity_id, event_number=event_number,
            ) from error
        except ValidationError as error:
            raise InvalidPayloadError(
                f"stored {name!r} payload does not validate: "
                f"{_without_values(error) if fields.names else error}",
                key=key,
                entity_type=entity_type,
                entity_id=entity_id,
                event_number=event_number,
            ) from None if fields.names else error


def _without_values(error: ValidationError) -> str:
    """A validation error without the values it saw: those of a class with personal
    fields were decrypted, and the message may end up in logs and parked records."""
    return "; ".join(
        f"{'.'.join(map(str, item['loc'])) or '(content)'}: {item['msg']}"
        for item in error.errors(include_url=False, include_input=False)
    )
