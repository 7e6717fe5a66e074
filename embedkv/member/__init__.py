"""The runtime of one member: the Ready loop, proposals, apply, reads, watch fan-out, lease
timers and bootstrap (see docs/internals/member-api.md and docs/internals/runtime.md)."""

from .member import Member, new_identity
from .watch import WatchHandle
from .writer import MemberStats

__all__ = ["Member", "MemberStats", "WatchHandle", "new_identity"]
