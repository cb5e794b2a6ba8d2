"""Cluster settings and flags (docs/cluster.md, "Running it")."""

from __future__ import annotations

import pytest

from confstream.cli import build_parser, load_settings
from confstream.cluster.node import advertised_addresses, default_node_id
from confstream.settings import Settings


def test_without_a_redis_url_nothing_changes() -> None:
    assert Settings().cluster_mode is False


def test_flags_set_the_cluster_settings() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--cluster-redis-url", "redis://10.0.0.5:6379/0",
            "--node-id", "media-1",
            "--advertise-http", "http://10.0.0.11:8080/",
            "--advertise-sip", "10.0.0.11:5070",
        ]
    )  # fmt: skip
    settings = load_settings(args)
    assert settings.cluster_mode and settings.node_id == "media-1"
    assert default_node_id(settings) == "media-1"
    assert advertised_addresses(settings, 1, 2, "203.0.113.11") == (
        "http://10.0.0.11:8080",
        "10.0.0.11:5070",
        "203.0.113.11",
    )


def test_listen_addresses_are_advertised_unless_they_are_wildcards() -> None:
    settings = Settings(http_listen="10.0.0.11:0", sip_listen="10.0.0.11:0")
    assert advertised_addresses(settings, 8080, 5070, "x")[:2] == (
        "http://10.0.0.11:8080",
        "10.0.0.11:5070",
    )
    with pytest.raises(ValueError, match="advertise"):
        advertised_addresses(Settings(http_listen="0.0.0.0:8080"), 8080, 5070, "x")


def test_the_lease_outlasts_two_heartbeats() -> None:
    with pytest.raises(ValueError, match="cluster_lease"):
        Settings(cluster_heartbeat=1.0, cluster_lease=1.5)
