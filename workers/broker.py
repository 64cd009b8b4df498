"""The Redis transport of trialflow's Celery app: kombu's, with the close that losing Redis breaks
made whole again.

What kills a busy worker when Redis restarts (measured with Celery 5.7 and kombu 5.7; the
traceback ends in ``_connparams``: ``'NoneType' object has no attribute 'hostname'``, reported
with celery/celery#9250): the worker is waiting on BRPOP while it has unacknowledged tasks (late
acks), and the connection drops. Celery collects the broken connection, then closes it.
kombu's ``Connection.collect()`` closes the channel, whose first step reads the pending BRPOP
reply; that read fails with a ConnectionError, which ``collect()`` swallows, so the channel is
left open while its transport is detached (``connection.client = None``). The ``close()`` that
follows closes the channel again; this time it gets as far as putting the unacknowledged tasks
back, which builds a Redis client from the detached connection's hostname: AttributeError. Not
a connection error, so nothing catches it, and the worker stops ("Unrecoverable error").

Here a connection error while reading that last BRPOP reply no longer cuts the close short:
the channel closes inside ``collect()`` as intended, and the second close finds it closed.
Nothing is lost by it: the unacknowledged tasks are put back if Redis answers again, and
otherwise return after the visibility timeout; the outbox's relay re-sends their effects anyway.
"""
from __future__ import annotations

import logging
from queue import Empty
from typing import Any

from kombu.transport import redis

log = logging.getLogger("trialflow.worker")


class Channel(redis.Channel):
    def close(self) -> None:
        state: Any = self  # kombu's type stubs leave out the private state this fix reads
        if state._in_poll and not self.closed:
            try:
                state._brpop_read()
            except Empty:
                pass
            except state.connection_errors as exc:
                log.info("the broker connection was lost while a BRPOP was pending (%s); closing the channel",
                         type(exc).__name__)
        super().close()


class Transport(redis.Transport):
    Channel = Channel
