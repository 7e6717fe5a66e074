"""Coordination recipes on the public Store API: locks, election, queues, barriers,
semaphores, counters, parties, a service registry and a live config view.

Reach them from the store (``store.lock("db")``, ``store.queue("jobs")``...). Their keys live
under ``_embedkv/<kind>/<name>/``; a name must not contain ``/`` (the reserved separator).
"""

from ._base import ROOT, SEP, Session, SessionLost
from .config import ConfigView
from .election import Election, Observation
from .lock import Lock, RWLock
from .queue import Item, Queue
from .services import Endpoint, Registration, Services
from .sync import Barrier, Counter, DoubleBarrier, Party, Semaphore

__all__ = [
    "ROOT", "SEP", "Barrier", "ConfigView", "Counter", "DoubleBarrier", "Election", "Endpoint",
    "Item", "Lock", "Observation", "Party", "Queue", "RWLock", "Registration", "Semaphore",
    "Services", "Session", "SessionLost",
]
