"""Several layerbootd replicas on one store and one PostgreSQL database (``server.replicas``; docs/scale.md).

* :mod:`.member`: this process as a replica: its id (``HOST:PID:RANDOM``, the owner of its claims), its row in
  the ``replicas`` table and the loop that renews its claims on uploads before their lease runs out;
* :mod:`.lease`: named leases in the database (``monitor``: which replica runs the fleet monitor).

The bake queue's claims themselves (owner, lease, take-over, the fenced outcome) are queries on the
``uploads`` table and live with it in server/uploads.py; the store lock that admits replicas together is
server/daemonlock.py.
"""
