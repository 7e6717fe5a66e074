"""The runtime of one member: the Ready loop, proposals, apply, reads, watch fan-out, lease
timers and bootstrap (see docs/internals/member-api.md and docs/internals/runtime.md)."""

from .cluster import ClusterOptions, MemberInfo, check_cluster_options, new_identity
from .member import Member
from .watch import WatchHandle
from .writer import MemberStats

__all__ = [
    "ClusterOptions",
    "Member",
    "MemberInfo",
    "MemberStats",
    "WatchHandle",
    "check_cluster_options",
    "new_identity",
]
