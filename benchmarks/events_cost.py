"""What one event costs fedd's CPU, and the broker's: the get-redirect path of docs/events.md
("What an event costs"), in process, without HTTP.

1. The steps, each timed alone over many events (microseconds per event): render the prebuilt
   envelope (`fedd.events.model.render`), a fresh id, `EventsService.emit_template` (id, time,
   render, CRC + copy into the journal, batch append), and the publish frames of a batch of 1,000
   (`Publisher.messages`, or `Publisher.bundles` for bundles).
2. The whole path into the machine's RabbitMQ (127.0.0.1:5672, guest/guest; a durable topic
   exchange and a durable queue bound to '#', as benchmarks/redirect_throughput.py sets up):
   EventsService with its journal, direct publishing and outbox, AmqpSink with confirms, fed with
   `--rate` events a second in 1 ms steps until `--events` were emitted and all were confirmed
   (`--queue lazy|v2|lazy-v2`: the queue's type, as in redirect_throughput.py).
   Reported: fedd's CPU (this process, every thread) and RabbitMQ's (beam.smp) per event, for each
   `--bundle` size given.

Usage: python3 benchmarks/events_cost.py [--events N] [--rate R] [--bundle 1,100] [--queue TYPE] [--steps-only]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from common import ROOT  # noqa: F401  (puts the checkout first on sys.path)
from redirect_throughput import BROKER, QUEUES, broker_pids, broker_queue, cpu_seconds

from fedd.config import EventsConfig
from fedd.events.amqp_frames import Publisher
from fedd.events.model import EventIds, render, template
from fedd.events.outbox import Outbox
from fedd.events.service import EventsService
from fedd.events.sinks import AmqpSink

VARYING = ("client_dn", "locate_ms")
PAYLOAD = {
    "path": "/atlas/data/popular.root",
    "method": "GET",
    "client": "127.0.0.1",
    "client_country": "CH",
    "client_dn": None,
    "endpoint": "ceph",
    "url": "http://127.0.0.1:8000/bench/atlas/data/popular.root",
    "candidates": 2,
    "locate_ms": 0.0,
}
VALUES = (b"null", b"0.0")


def per_event(fn: Callable[[], Any], n: int) -> float:
    """Microseconds of CPU per call, the best of 5 runs of n calls."""
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, time.process_time() - start)
    return best / n * 1e6


class FakeClock:
    """The service's clock for the steps: time moves, nothing is scheduled."""

    def seconds(self) -> float:
        return time.time()

    def callLater(self, *_: Any) -> Any:
        return None


class NullSink:
    connected = True

    def describe(self) -> str:
        return "null"


def steps(bundle_sizes: list[int]) -> None:
    t = template("get-redirect", PAYLOAD, VARYING)
    ids = EventIds(random.getrandbits(64))
    now = time.time()
    n = 100_000
    print(f"steps, CPU us per event (best of 5 x {n:,}):")
    print(f"  id                          {per_event(ids, n):6.2f}")
    print(f"  render                      {per_event(lambda: render(t, ids(), VALUES, now), n):6.2f}")
    with tempfile.TemporaryDirectory(prefix="fedd-events-cost-") as tmp:
        config = EventsConfig(outbox=os.path.join(tmp, "outbox.sqlite"))
        service = EventsService(config, clock=FakeClock(), outbox=None, sink=NullSink())  # type: ignore[arg-type]
        service._open = True  # as after its start: the outbox takes events
        service.running = True  # its flush is scheduled on the fake clock: never runs

        def emit() -> None:
            service.emit_template(t, VALUES)
            if len(service._batch) >= 1000:  # what a flush takes away
                service._batch = []

        print(f"  emit_template (+ journal)   {per_event(emit, n):6.2f}")
        service.journal.close(everything_stored=True)
    publisher = Publisher(1, "fedd-bench", 131072)
    batch = [(ids(), "fedd.get.redirect", render(t, ids(), VALUES, now)) for _ in range(1000)]
    for size in bundle_sizes:
        us = per_event(lambda: publisher.bundles(batch, size), 100) / 1000  # noqa: B023
        print(f"  frames, bundle {size:<5}       {us:6.2f}")


def whole_path(exchange: str, size: int, events: int, rate: float) -> tuple[float, float, float, float]:
    """(fedd CPU us, RabbitMQ CPU us per event, seconds, the emitting loop's own CPU us per event)
    for `events` emitted at `rate` a second. The loop (a timer every millisecond) is run once
    without emitting first: fedd's figure is without it."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.task import deferLater

    tmp = tempfile.mkdtemp(prefix="fedd-events-cost-")
    config = EventsConfig(
        outbox=os.path.join(tmp, "outbox.sqlite"), broker=BROKER, exchange=exchange, bundle=size, timeout=30.0
    )
    outbox = Outbox(reactor, config.outbox, config.outbox_max_events, config.shed)
    sink = AmqpSink(reactor, BROKER, exchange, timeout=config.timeout, bundle=size)
    service = EventsService(config, clock=reactor, outbox=outbox, sink=sink, direct=True)
    sink.service.setName("broker")
    sink.service.setServiceParent(service)
    t = template("get-redirect", PAYLOAD, VARYING)
    rabbit = broker_pids()
    out: list[float] = []

    async def run() -> None:
        service.startService()
        while not (sink.connected and service._open):
            await deferLater(reactor, 0.01, lambda: None)
        loop0 = _cpu()
        await emitting(lambda: None)
        loop = (_cpu() - loop0) / events * 1e6
        fedd0, rabbit0, wall0 = _cpu(), cpu_seconds(rabbit), time.monotonic()
        await emitting(lambda: service.emit_template(t, VALUES))
        while service.sent + service.dropped < service.emitted:
            await deferLater(reactor, 0.005, lambda: None)
        n = service.emitted
        fedd = (_cpu() - fedd0) / n * 1e6 - loop
        out.extend((fedd, (cpu_seconds(rabbit) - rabbit0) / n * 1e6, time.monotonic() - wall0, loop))
        await service.stopService()

    async def emitting(emit: Callable[[], None]) -> None:
        step, emitted = rate / 1000, 0.0
        while emitted < events:
            for _ in range(int(emitted + step) - int(emitted)):
                emit()
            emitted += step
            await deferLater(reactor, 0.001, lambda: None)

    def failed(f: Any) -> None:
        f.printTraceback()
        out.clear()

    done: Deferred[None] = ensureDeferred(run())
    done.addErrback(failed)
    done.addBoth(lambda _: reactor.callLater(0, reactor.stop))
    reactor.run()
    if not out:
        sys.exit("the run failed")
    return out[0], out[1], out[2], out[3]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread: the outbox's and the journal's too
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=20_000.0, help="events per second")
    parser.add_argument("--bundle", default="1,100", help="bundle sizes, comma-separated")
    parser.add_argument("--queue", default="classic", choices=sorted(QUEUES), help="the consumer queue's type")
    parser.add_argument("--steps-only", action="store_true")
    parser.add_argument("--whole-only", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.bundle.split(",")]
    if not args.whole_only:
        steps(sizes)
    if args.steps_only:
        return
    if len(sizes) != 1:  # one reactor per process: each size in a process of its own
        import subprocess

        for size in sizes:
            cmd = [sys.executable, __file__, "--whole-only", "--bundle", str(size)]
            cmd += ["--events", str(args.events), "--rate", str(args.rate), "--queue", args.queue]
            subprocess.run(cmd, check=True, timeout=600)
        return
    with broker_queue(QUEUES[args.queue]) as exchange:
        fedd_us, rabbit_us, seconds, loop_us = whole_path(exchange, sizes[0], args.events, args.rate)
    print(
        f"whole path, {args.queue} queue, bundle {sizes[0]:<5}: {args.events:,} events at {args.rate:,.0f}/s"
        f" in {seconds:.1f} s:"
        f" fedd {fedd_us:5.1f} us, RabbitMQ {rabbit_us:5.1f} us CPU per event"
        f" (the emitting loop's {loop_us:.1f} us apart)"
    )


if __name__ == "__main__":
    main()
