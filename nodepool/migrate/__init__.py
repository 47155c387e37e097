"""Moving from this launcher to Zuul's own launcher (zuul-launcher).

``migrate.zuul_launcher`` maps the loaded nodepool.yaml to Zuul's
configuration objects and the ``zuul.conf`` connections; ``migrate.keys``
says, for every key of nodepool.yaml, what it became; ``migrate.output``
writes the objects, the connections and the report.  None of them reads
ZooKeeper or a cloud.
"""
