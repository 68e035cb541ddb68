"""artd's hot-folder daemon: spool, intake, batching, service."""
