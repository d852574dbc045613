"""The client commands of the `sluice` CLI: submit, jobs, results, watch."""
