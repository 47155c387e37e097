"""The ZooKeeper layer: connection, records, locks, caches and the store."""
