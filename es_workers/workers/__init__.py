"""Dramatiq subscribers: the bus (`bus`), what an actor does with a notice (`delivery`),
the waking Redis broker (`broker`) and the worker-process middleware (`middleware`)."""

from .broker import WakingRedisBroker
from .bus import DramatiqEventBus
from .delivery import DeliveryOptions, Notice

__all__ = ["DeliveryOptions", "DramatiqEventBus", "Notice", "WakingRedisBroker"]
