"""The HTTP agents of third-party copies: remote hosts through the guard (`[tpc] allow_hosts`, checked
on each connection's resolved address, never pooled), the federation's own endpoints with their own
TLS settings (pooled). Both read and send 1 MiB per call (`fedd.checksums.bulk`)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from fedd.checksums.bulk import BulkEndpointFactory
from fedd.config import TpcConfig
from fedd.tpc.guard import Guard, GuardedEndpointFactory, HostPolicy


def remote_tls(config: TpcConfig) -> Any:
    from fedd.endpoints import tls_policy

    return tls_policy(config.verify_tls, config.ca_file, default=BrowserLikePolicyForHTTPS())


class CopyAgents:
    def __init__(self, federation: Any, reactor: Any) -> None:
        self.fed = federation
        self.reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._remote: tuple[TpcConfig, Guard, Agent] | None = None
        self._agents: dict[str, tuple[Any, Agent]] = {}

    def remote(self) -> tuple[Guard, Agent]:
        """The guard and the agent for remote hosts, rebuilt when `[tpc]` changed (a reload)."""
        config = self.fed.config.tpc
        if self._remote is None or self._remote[0] != config:
            guard = Guard(self.reactor, HostPolicy(config.allow_hosts), config.connect_timeout)
            factory = GuardedEndpointFactory(
                self.reactor, guard, tls=remote_tls(config), connect_timeout=config.connect_timeout
            )
            pool = HTTPConnectionPool(self.reactor, persistent=False)  # every remote connection checked anew
            bulk = BulkEndpointFactory(self.reactor, inner=factory)
            self._remote = (config, guard, Agent.usingEndpointFactory(self.reactor, bulk, pool=pool))
        return self._remote[1], self._remote[2]

    def endpoint(self, eid: str) -> Agent:
        """An agent for one of the federation's own endpoints, with that endpoint's TLS settings."""
        from fedd.endpoints import _tls_policy  # the endpoints' own rule: verify_tls, ca_file

        config = self.fed.endpoints[eid].config
        hit = self._agents.get(eid)
        if hit is None or hit[0] is not config:
            policy = _tls_policy(config) or BrowserLikePolicyForHTTPS()
            bulk = BulkEndpointFactory(self.reactor, tls=policy, connect_timeout=self.fed.config.tpc.connect_timeout)
            agent = Agent.usingEndpointFactory(self.reactor, bulk, pool=self._pool)
            hit = self._agents[eid] = (config, agent)
        return hit[1]

    def close(self) -> Deferred[None]:
        closed: Deferred[None] = self._pool.closeCachedConnections()  # HTTPConnectionPool is unannotated
        return closed
