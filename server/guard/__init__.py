"""Keeping layerbootd available: no single client, node or anonymous peer may take the service from the others.

* :mod:`.connections`: the listening socket, with a per-address connection limit in front of aiohttp;
* :mod:`.limits`: the timeouts and limits (``server.*`` settings) and the per-node counters (downloads,
  uploads) behind the 429 answers;
* :mod:`.sender`: object bodies sent with sendfile(2) by worker threads that never wait on one slow client;
* :mod:`.body`: request bodies read with an idle timeout.

The header timeout is aiohttp's own ``keepalive_timeout``: aiohttp arms it when a connection opens and again
after each response, and closes the connection if no complete request head has arrived by then.
"""
