"""Target schemas (Avro), record conversion, keys and hashes: pure code, no I/O."""
