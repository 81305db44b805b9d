"""The system of record: records, Redis store, content-addressed artifacts, gates."""
