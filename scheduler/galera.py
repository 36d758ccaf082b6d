"""What the scheduler does differently when its MariaDB is a node of a Galera cluster.

Galera replicates each transaction's write set at commit and certifies it against the write sets committed
on the other nodes in the meantime. Row locks, `FOR UPDATE` and `SKIP LOCKED` act only on the node that runs
the statement, so two dispatchers writing through two nodes can select and update the same pending run; the
one certified second is refused with error 1213 (deadlock) at commit, or its transaction is aborted by the
applier with the same error. Every state change here is one transaction of conditional writes, re-run whole
by `Store.write` on 1213 (with backoff and jitter, so two losers do not collide again), so a claim, hand-off
or result that lost certification is never taken as done: its return value is only used after its commit.

A node applies the other nodes' write sets shortly after they commit, so a read may see a state a moment
old. Writes stay correct anyway (a conditional UPDATE on a stale row conflicts with the newer write set),
but readers should not be surprised: a run created through one API instance and polled through another
must not answer 404. So each session of a Galera node gets causal reads (`wsrep_sync_wait = 1`: a SELECT
waits until the node has applied everything committed in the cluster before it began), unless the
administrator configured something stricter. Plain MariaDB and MySQL are left as they are.
"""

from __future__ import annotations

import logging
from typing import Any

from pony.orm import Database

log = logging.getLogger(__name__)

CAUSAL_READS = 1  # wsrep_sync_wait bit for SELECT, SHOW and BEGIN


def causal_reads(db: Database) -> None:
    """Register the per-connection setup; a no-op on servers without wsrep."""

    @db.on_connect(provider="mysql")
    def _causal_reads(_db: Database, connection: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SHOW VARIABLES WHERE Variable_name IN ('wsrep_on', 'wsrep_sync_wait')")
            values = {str(name): str(value) for name, value in cursor.fetchall()}
            if values.get("wsrep_on") != "ON":
                return
            current = int(values.get("wsrep_sync_wait") or 0)
            if not current & CAUSAL_READS:
                cursor.execute(f"SET SESSION wsrep_sync_wait = {current | CAUSAL_READS}")
        log.debug("Galera node: causal reads on this connection")
