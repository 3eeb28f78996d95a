"""Reading a /metrics answer in tests: role counters are per process, so tests compare values
before and after what they do."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families


async def metric(client: Any, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`, from `client`'s /metrics."""
    res = await client.get("/metrics")
    assert res.status == 200, await res.text()
    total = 0.0
    for family in text_string_to_metric_families(await res.text()):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total
