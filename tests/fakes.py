"""In-memory endpoints for unit tests: `fedd.testing.FakeEndpoint`, which tests/test_contract.py runs
through the same suite as the real servers (Ceph RGW, Apache mod_dav, Azurite, a local directory)."""

from fedd.testing import FakeEndpoint

__all__ = ["FakeEndpoint"]
