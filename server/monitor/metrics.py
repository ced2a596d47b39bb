"""``GET /metrics``: layerbootd in the Prometheus text format (prometheus-client).

Two kinds of series:

* counted by this process as things happen (reset when layerbootd restarts, as Prometheus expects of
  counters): boot stage durations from boot reports, bytes served, heartbeats, power actions, notifications;
* read from the database at each scrape, so they survive restarts and agree with the CLI: node states, open
  incidents by type, incidents opened, ladder steps taken (by type, action and result), the upload queue.

Names (all prefixed ``layerboot_``): ``nodes{state}``, ``node_state{mac,profile,state}`` (1 for the node's
current state), ``node_heartbeat_age_seconds{mac}``, ``node_generation{mac,profile}``,
``boot_stage_seconds{stage}`` (histogram), ``boot_seconds`` (histogram, kernel start to switch_root),
``served_bytes_total``, ``heartbeats_total``, ``upload_queue_depth``, ``uploads{state}``,
``incidents_open{type}``, ``incidents_opened_total{type}``, ``ladder_steps_total{type,action,result}``,
``power_actions_total{driver,action,result}``, ``notifications_total{channel,result}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from layerboot.server.monitor.detectors import STATES, Limits
from layerboot.server.monitor.records import MonitorRecords
from layerboot.server.monitor.status import fleet_status

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
BOOT_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600)


class Metrics:
    """The registry layerbootd exports, and the counters its handlers and the monitor update."""

    def __init__(self, state: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.stage_seconds = Histogram("layerboot_boot_stage_seconds", "Seconds each stage1 stage took, from boot "
                                       "reports", ["stage"], buckets=STAGE_BUCKETS, registry=self.registry)
        self.boot_seconds = Histogram("layerboot_boot_seconds", "Seconds from kernel start to switch_root, from "
                                      "successful boot reports", buckets=BOOT_BUCKETS, registry=self.registry)
        self.served_bytes = Counter("layerboot_served_bytes", "Bytes of layers, kernels and initrds sent to nodes",
                                    registry=self.registry)
        self.heartbeats = Counter("layerboot_heartbeats", "Heartbeats received from nodes", registry=self.registry)
        self.power_actions = Counter("layerboot_power_actions", "Power actions by driver, action and result",
                                     ["driver", "action", "result"], registry=self.registry)
        self.notifications = Counter("layerboot_notifications", "Incident messages sent, by channel and result",
                                     ["channel", "result"], registry=self.registry)
        self.registry.register(_DatabaseCollector(state))

    def boot_event(self, event: Any) -> None:
        for stage, seconds in event.timings.items():
            self.stage_seconds.labels(stage).observe(seconds)
        if event.ok and event.stage == "switch_root" and event.elapsed is not None:
            self.boot_seconds.observe(event.elapsed)

    async def render(self) -> tuple[bytes, str]:
        """The exposition text (the database part is read in a worker thread) and its content type."""
        return await asyncio.to_thread(generate_latest, self.registry), CONTENT_TYPE_LATEST


class _DatabaseCollector(Collector):
    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        state = self.state
        records = MonitorRecords(state.registry.db)
        limits = Limits.from_config(state.config)
        fleet = fleet_status(state.registry, records, state.profiles, limits)
        totals = GaugeMetricFamily("layerboot_nodes", "Registered nodes by state", labels=["state"])
        for name in STATES:
            totals.add_metric([name], sum(1 for n in fleet if n.state == name))
        yield totals
        one_hot = GaugeMetricFamily("layerboot_node_state", "1 for each node's current state",
                                    labels=["mac", "profile", "state"])
        age = GaugeMetricFamily("layerboot_node_heartbeat_age_seconds", "Seconds since the node's last heartbeat",
                                labels=["mac"])
        generation = GaugeMetricFamily("layerboot_node_generation", "Generation the node runs",
                                       labels=["mac", "profile"])
        for node in fleet:
            one_hot.add_metric([node.mac, node.profile, node.state], 1)
            if node.heartbeat_age is not None:
                age.add_metric([node.mac], node.heartbeat_age)
            if node.generation is not None:
                generation.add_metric([node.mac, node.profile], node.generation)
        yield from (one_hot, age, generation)
        opened, open_now = records.opened_counts(), records.open_counts()
        gauge = GaugeMetricFamily("layerboot_incidents_open", "Open (and paused) incidents by type", labels=["type"])
        counter = CounterMetricFamily("layerboot_incidents_opened", "Incidents opened, by type", labels=["type"])
        for itype in state.config.monitor_incidents.values():
            gauge.add_metric([itype.name], open_now.get(itype.name, 0))
            counter.add_metric([itype.name], opened.get(itype.name, 0))
        yield from (gauge, counter)
        steps = CounterMetricFamily("layerboot_ladder_steps", "Action-ladder steps taken, by incident type, action "
                                    "and result", labels=["type", "action", "result"])
        for row in records.step_counts():
            steps.add_metric([row["type"], row["action"], row["result"]], row["n"])
        yield steps
        if state.uploads is not None:
            uploads = GaugeMetricFamily("layerboot_uploads", "Uploads by state", labels=["state"])
            for name, number in sorted(state.uploads.counts().items()):
                uploads.add_metric([name], number)
            yield uploads
            yield GaugeMetricFamily("layerboot_upload_queue_depth", "Uploads waiting for a bake or being baked",
                                    value=state.uploads.records.pending())
