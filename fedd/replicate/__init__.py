"""Popularity-driven replication (issue 17): reads counted per file and client region, hot files
copied by fedd's own third-party-copy engine to the writable endpoint nearest to their readers, and
those copies evicted when they cool down or their endpoint runs short of space (docs/operations.md)."""
