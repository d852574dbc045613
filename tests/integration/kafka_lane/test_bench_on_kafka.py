"""`sluice bench` on Apache Kafka: its runs there, and Kafka Connect with the Debezium JDBC
sink draining the same records beside Sluice's producer path, with the ratio."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson

from app.devtools.kafka_cluster import KafkaCluster
from app.settings import env_var
from tests.integration.conftest import on_cluster


def test_the_bench_measures_sluice_and_kafka_connect_on_kafka(kafka_cluster: KafkaCluster) -> None:
    env = {**os.environ, env_var("kafka_bootstrap"): kafka_cluster.bootstrap,
           **{env_var(k): v for k, v in on_cluster(kafka_cluster).items()}}
    completed = subprocess.run(
        [sys.executable, "-m", "app.cli", "bench", "--records", "3000", "--payloads", "2",
         "--big-mb", "0", "--producer-records", "0", "--no-dirty", "--no-csv", "--small-jobs", "0",
         "--sweep", "", "--format-records", "0", "--watchers", "0", "--peer-records", "2000",
         "--json"],
        capture_output=True, timeout=280, check=False, env=env)
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]
    kafka = orjson.loads(completed.stdout)["kafka"]
    assert kafka["single"]["records"] == 3000 and kafka["single"]["states"] == ["completed"]
    assert kafka["concurrent"]["records"] == 3000
    # Both drained the same number of records; the peer's rows were counted in the table.
    assert kafka["producers"]["records"] == kafka["connect"]["records"] == 2000
    assert kafka["connect"]["tasks"] == 4 and kafka["connect"]["records_per_s"] > 0
    assert kafka["producers_over_connect"] == (
        kafka["producers"]["records_per_s"] / kafka["connect"]["records_per_s"])
    assert b"Kafka Connect and the Debezium JDBC sink" in completed.stderr
