"""The gRPC transport: the BulkIngest service (bulk_ingest.proto) on its own port of the web
process, beside HTTP and with its semantics; the *_pb2* stubs are generated
(``python -m app.devtools.grpc_stubs``)."""
