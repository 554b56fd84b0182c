"""Replica mode: many copies of the hosted server behind a load balancer, on one PostgreSQL ledger.

Any request may land on any replica, so nothing a client needs may live in one process's memory:
- Streamable HTTP is stateless for 2025-era clients (2026-07-28 clients have no protocol session anyway);
  SSE is not served, since its session lives in one process.
- Request state (the 2026-07-28 answer-and-retry of a mid-call question) is sealed with a key every
  replica shares (`APIKEY_REQUEST_STATE_KEY`), and every replica has the same server name.
- Each task is watched by the one replica holding its lease; the others follow its row and wake on its
  announcement. A replica that stops or dies loses its leases; another takes them over within
  `lease_seconds` plus a third of it (its scan period), then asks the gateway for the task's state at once.

`mode.py` chooses replica mode and runs this process as one replica (the hosted app plugs it in through its
one seam, hosted/mode.py); `tasks.py` is the fleet-aware task registry and watcher; `callbacks.py` applies a
gateway callback for the whole fleet; `fleet.py` holds what the replicas share beside the ledger
(leases, task states, announcements).
"""
