"""Generated sensor readings and submission helpers shared by the integration tests."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

NDJSON = {"Content-Type": "application/x-ndjson"}
BASE_MS = 1_696_161_600_000  # 2023-10-01T12:00:00Z


def reading(sensor: str, i: int, value: float | None = None) -> dict[str, Any]:
    return {"sensor_id": sensor, "value": float(i) if value is None else value,
            "sampled_at": BASE_MS + i}


def ndjson(records: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


async def submit(http: aiohttp.ClientSession, body: bytes, *, operation: str = "insert",
                 headers: dict[str, str] | None = None,
                 target: str = "sensor_readings") -> dict[str, Any]:
    """POST a payload and insist on 202."""
    async with http.post("/v1/bulk-operations", params={"target": target, "operation": operation},
                         data=body, headers=headers or NDJSON) as r:
        doc: dict[str, Any] = await r.json(content_type=None)
        assert r.status == 202, doc
        assert r.headers["Location"] == f"/v1/bulk-operations/{doc['job_id']}"
        return doc
