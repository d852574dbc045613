"""Topic names, declared once for the web ingress, the agents and the docs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The Kafka topics Sluice reads and writes, derived from one prefix."""

    prefix: str

    @property
    def records(self) -> str:
        """Record envelopes: up to batch-size records of one partition, keyed by partition."""
        return f"{self.prefix}.records"

    @property
    def results(self) -> str:
        """Per-record outcomes, one message per written batch and job, keyed by job id."""
        return f"{self.prefix}.results"

    @property
    def job_reports(self) -> str:
        """One report per job when it reaches a terminal state, keyed by job id."""
        return f"{self.prefix}.job-reports"

    def input_for(self, target: str) -> str:
        """Where producers write plain records (JSON or Avro) for one target."""
        return f"{self.prefix}.input.{target}"
