"""Durable state shared by several fedd hosts (`[state] database`): checksums, run-time downtimes,
upload reservations, counters and a heartbeat row per host, on SQLite (one host) or PostgreSQL
(several hosts behind a load balancer). See docs/operations.md, "Several hosts"."""
