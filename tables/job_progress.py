"""job_to_progress: the latest known counts of each job, as the report agent saw them."""

from __future__ import annotations

from app.faust_app import app
from app.settings import get_settings

job_to_progress = app.Table(
    "job_to_progress",
    default=dict,
    key_type=str,
    partitions=get_settings().partitions,
    help="job id -> {state, records_received, succeeded, failed, duplicates, reported}.",
)
