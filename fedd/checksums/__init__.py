"""File checksums: what clients ask for (Want-Digest, Want-Repr-Digest), where fedd finds them
(S3 metadata, a DAV endpoint's Digest answer, its own database) and how it computes the missing ones.

`digest` is pure and safe to import from anywhere (the endpoints use it); `service` holds the workers.
"""
