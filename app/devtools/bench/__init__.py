"""`sluice bench`: end-to-end figures from a stack of its own, beside a raw COPY of the same rows.

The bench starts the services (embedded unless configured), then worker and web
processes exactly as `sluice run` does, with a fresh topic prefix and consumer group
per configuration so that runs do not see each other's records.
"""
