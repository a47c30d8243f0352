"""Personal data: which content fields are about a person (marked `Personal`), whose person
they are (the subject), and what a field reads as once that person is forgotten.

No cryptography here (that is `es_workers.encryption`): this module reads a Content class
once and says which of its fields are stored encrypted, so that the codec, the CLI and the
dashboard agree on them::

    class Registered(Content):
        personal_subject = "customer_id"   # default: the event's entity ID
        customer_id: str
        email: Annotated[str, Personal]
        birth_date: Annotated[date | None, Personal] = None

After the subject is forgotten, a personal `str` field reads as `FORGOTTEN_TEXT`; any other
one as its default when it has one, else None. A class whose personal field could not hold
that placeholder is refused when it is defined.
"""

from __future__ import annotations

import types
import typing
import weakref
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from .errors import EsError

FORGOTTEN_TEXT = "<forgotten>"
"""What a personal `str` field reads as once its subject was forgotten."""
REDACTED_TEXT = "<personal>"
"""What `redacted` shows instead of a personal field's value."""


class Personal:
    """Marks a content field as personal data: `email: Annotated[str, Personal]`.

    The field is stored encrypted with its subject's data key and reads as a placeholder
    once the subject is forgotten (`store.forget(subject)`). The subject is the event's
    entity ID, or the content field the class variable `personal_subject` names.
    `Personal` and `Personal()` mean the same."""


class PersonalFieldError(EsError, TypeError):
    """A Content class declares personal fields it could not read back once forgotten, or
    names a subject field it does not have."""


@dataclass(frozen=True, slots=True)
class PersonalFields:
    """The personal fields of one Content class, the JSON of what each reads as once
    forgotten (`placeholders`), and the field naming the subject (None: the entity ID)."""

    names: tuple[str, ...]
    placeholders: dict[str, bytes]
    subject_field: str | None


PLAIN = PersonalFields((), {}, None)
"""The personal fields of a class without any."""
_found: dict[type, PersonalFields] = {}


def personal_fields(cls: type[BaseModel]) -> PersonalFields:
    """The personal fields of `cls` (none for most classes), read once per class; raises
    PersonalFieldError for a class that cannot hold its placeholders."""
    found = _found.get(cls)
    if found is None:
        found = _read_fields(cls)
        _found[cls] = found
    return found


def _read_fields(cls: type[BaseModel]) -> PersonalFields:
    fields = cls.model_fields
    names = tuple(name for name, field in fields.items() if _marked(field))
    subject = getattr(cls, "personal_subject", None)
    if not names:
        return PLAIN
    if subject is not None and (subject not in fields or subject in names):
        raise PersonalFieldError(
            f"{cls.__qualname__}.personal_subject = {subject!r} must name a plain field of "
            f"the class (the subject's ID, stored in clear), one of "
            f"{sorted(set(fields) - set(names))}"
        )
    placeholders = {name: _placeholder(cls, name, fields[name]) for name in names}
    return PersonalFields(names, placeholders, subject)


def _marked(field: FieldInfo) -> bool:
    return any(item is Personal or isinstance(item, Personal) for item in field.metadata)


def _placeholder(cls: type[BaseModel], name: str, field: FieldInfo) -> bytes:
    """The JSON of a personal field's forgotten placeholder, checked against its type."""
    # Annotated[annotation, *metadata], the field's constraints included
    annotated: Any = typing.Annotated
    adapter: TypeAdapter[Any] = TypeAdapter(annotated[(field.annotation, *field.metadata)])
    if _holds_text(field.annotation):
        value: Any = FORGOTTEN_TEXT
    elif not field.is_required():
        return adapter.dump_json(field.get_default(call_default_factory=True))
    else:
        value = None
    try:
        return adapter.dump_json(adapter.validate_python(value))
    except ValidationError:
        raise PersonalFieldError(
            f"personal field {cls.__qualname__}.{name} could not hold its placeholder "
            f"{value!r} once its subject is forgotten: give it a default, or a type that "
            f"allows {value!r} (e.g. `{_type_name(field.annotation)} | None`)"
        ) from None


def _holds_text(annotation: Any) -> bool:
    """Whether the annotation is `str`, or a union with `str` in it."""
    if annotation is str:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return str in typing.get_args(annotation)
    return False


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or repr(annotation)


def redacted(content: BaseModel) -> dict[str, Any]:
    """The content as JSON-ready values, each personal field shown as `REDACTED_TEXT`
    (`es-workers show --redact`, the dashboard)."""
    values: dict[str, Any] = content.model_dump(mode="json")
    for name in personal_fields(type(content)).names:
        if name in values:
            values[name] = REDACTED_TEXT
    return values


# Contents read after their subject was forgotten. Weak: the mark lives as long as the
# content, and a content is told apart by identity (pydantic models are not hashable).
_forgotten: weakref.WeakValueDictionary[int, BaseModel] = weakref.WeakValueDictionary()


def mark_forgotten(content: BaseModel) -> None:
    """Marks a content decoded with placeholders for fields of a forgotten subject."""
    _forgotten[id(content)] = content


def is_forgotten(content: BaseModel) -> bool:
    """Whether the content was read with placeholders for a forgotten subject's fields."""
    return _forgotten.get(id(content)) is content
