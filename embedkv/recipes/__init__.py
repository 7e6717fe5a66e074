"""Coordination recipes on the public Store API: locks, election, queues, barriers,
semaphores, counters, parties, a service registry and a live config view.

Reach them from the store (``store.lock("db")``, ``store.queue("jobs")``...). Their keys live
under ``_embedkv/<kind>/<name>/``; a name must not contain ``/``.
"""

from ._base import ROOT, SEP, Session, SessionLost
from .lock import Lock, RWLock

__all__ = ["ROOT", "SEP", "Lock", "RWLock", "Session", "SessionLost"]
