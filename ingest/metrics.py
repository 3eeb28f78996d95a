"""The ingest process's Prometheus metrics (the pattern is `common.metrics`'s).

The API, the dispatcher and the scheduler count into these module-level counters (one ingest per
process); every ingest app's registry serves them.
"""

from __future__ import annotations

from prometheus_client import Counter

from sesflow.common.metrics import RoleMetrics

# registry=None: not in prometheus-client's default registry; `role_metrics()` serves them.
MESSAGES_ACCEPTED = Counter(
    "sesflow_ingest_messages_accepted",
    "Messages enqueued on `requests` by POST /v1/messages",
    registry=None,
)
RECIPIENTS_ACCEPTED = Counter(
    "sesflow_ingest_recipients_accepted",
    "Recipients of the messages enqueued by POST /v1/messages",
    registry=None,
)
DISPATCHER_ENTRIES = Counter(
    "sesflow_dispatcher_entries",
    "`requests` entries the dispatcher finished, by outcome (dispatched, dead_lettered)",
    ["outcome"],
    registry=None,
)
SCHEDULER_CHUNKS = Counter(
    "sesflow_scheduler_chunks_promoted",
    "Scheduled chunks moved into `sends` by this process",
    registry=None,
)
SCHEDULER_JOBS = Counter(
    "sesflow_scheduler_jobs_promoted",
    "Recipient jobs in the scheduled chunks moved into `sends` by this process",
    registry=None,
)


def role_metrics() -> RoleMetrics:
    return RoleMetrics(
        "ingest",
        collectors=(
            MESSAGES_ACCEPTED,
            RECIPIENTS_ACCEPTED,
            DISPATCHER_ENTRIES,
            SCHEDULER_CHUNKS,
            SCHEDULER_JOBS,
        ),
    )
