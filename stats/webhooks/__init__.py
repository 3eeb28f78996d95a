"""Signed outgoing webhooks, run by the stats role (docs/webhooks.md).

- `api`: the registry routes (`/v1/webhooks`), on the stats app;
- `endpoints`: endpoints and their `whsec_` secrets in Redis;
- `fanout`: group `webhooks` on every partition's `events`; a batch's deliveries are enqueued
  and its entries XACKed in one MULTI/EXEC (nothing lost, nothing enqueued twice);
- `queue`: the per-partition delivery queue (claim with a lease, settle, dead letters);
- `deliver`: the HTTP calls, signed per Standard Webhooks (`signing`), guarded against SSRF
  (`ssrf`), retried with `backoff`;
- `vocabulary`: the public event names and the payload of each event.
"""
