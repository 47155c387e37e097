"""Serving node requests: the protocol's rules (``protocol``), the handler
that applies them through the ZooKeeper store (``handler``, with its parts
``admission``, ``slots``, ``node_supply``, ``node_builds`` and ``orphans``),
the reaper (``reaper``), min-ready requests (``minready``) and the interface
to the cloud (``builder``).

How a launcher's pool worker uses them, one level-triggered loop::

    client = nodepool.zk.client.connect(settings)
    store = ZooKeeperStore(client)
    store.start_caches()
    store.wait_synced(timeout=30)
    reg = register_pool(client, PoolComponent(
        hostname=fqdn, version=__version__, id=make_pool_id(provider, pool),
        name=pool, provider_name=provider, supported_labels=labels, priority=prio))
    handler = NodeRequestHandler(store, PoolSettings(
        reg.component.id, provider, pool, frozenset(labels), prio, max_servers),
        builder, registration=reg)
    reaper = NodeReaper(store, {provider: builder})
    while running:
        handler.run_once()
        reaper.run_once()
        if housekeeping_due():
            run_housekeeping(store, {provider}, max_hold_age)
            finish_min_ready(store)
            submit_min_ready(store, {label: min_ready, ...})
        store.wait_for_change(timeout=1.0)
    handler.shutdown(); reaper.release_all(); reg.unregister()
"""
