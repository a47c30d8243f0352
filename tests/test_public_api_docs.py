"""Every public method of the public API (the classes in `es_workers.__all__`) says what it
does: a docstring of its own, inherited, or on the port it implements (a storage's `read`
is documented once, on `Storage.read`)."""

from __future__ import annotations

import inspect

import es_workers
from es_workers import ports

PORTS = (ports.Subscriptions, ports.EventBus, ports.NotifyingEventBus, ports.Rebuilding,
         ports.Storage, ports.LogStorage, ports.AsyncStorage, ports.AsyncLogStorage)


def documented(cls: type, name: str, value: object) -> bool:
    if isinstance(value, property):
        return bool((value.__doc__ or "").strip())
    if inspect.getdoc(getattr(cls, name)):
        return True
    return any(name in vars(port) and inspect.getdoc(getattr(port, name)) for port in PORTS)


def undocumented_methods() -> list[str]:
    found = set()
    for public in es_workers.__all__:
        cls = getattr(es_workers, public)
        if not inspect.isclass(cls):
            continue
        for name in dir(cls):
            owner = next((k for k in cls.__mro__ if name in vars(k)), None)
            if name.startswith("_") or owner is None or not owner.__module__.startswith(
                    "es_workers"):
                continue  # private, or pydantic's, Exception's, ...
            value = vars(owner)[name]
            function = getattr(value, "__func__", value)
            if not isinstance(value, property) and (
                    not callable(function) or inspect.isclass(function)):
                continue  # a constant or a nested class
            if not documented(cls, name, value):
                found.add(f"{owner.__module__}.{owner.__qualname__}.{name}")
    return sorted(found)


def test_every_public_method_of_the_public_api_has_a_docstring() -> None:
    assert undocumented_methods() == []
