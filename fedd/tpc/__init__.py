"""HTTP third-party copy (HTTP-TPC, as FTS and Rucio use it): `COPY` with `Source:` or `Destination:`.

`guard` decides which remote hosts fedd may talk to (pure) and connects only to addresses it checked;
`pump` streams one HTTP response body into another request with flow control; `engine` runs a copy
(placement, redirects, performance markers, checksum, clean-up, events).
"""
