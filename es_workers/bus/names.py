from __future__ import annotations

import re

from ..errors import SubscriberError

# What Dramatiq accepts as a queue name, kept short enough for Redis keys and metrics labels.
_SUBSCRIBER_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,79}")


def check_subscriber_id(subscriber_id: object) -> str:
    if not isinstance(subscriber_id, str) or not _SUBSCRIBER_ID.fullmatch(subscriber_id):
        raise SubscriberError(
            f"invalid subscriber ID {subscriber_id!r}: it names a Dramatiq queue, so use a letter "
            "or '_' followed by up to 79 letters, digits, '_' or '-'"
        )
    return subscriber_id
