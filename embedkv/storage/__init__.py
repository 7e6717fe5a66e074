"""Durable state of one member: the Raft log and the MVCC key-value state machine in LMDB."""
