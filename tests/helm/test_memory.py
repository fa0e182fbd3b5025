"""The in-memory event log's byte bound follows the container's memory limit:
the bound is true (it counts what events really cost), so a pod sized by its limit
keeps the log's share of it and headroom for the rest."""

import pytest

from conftest import render, render_error


@pytest.mark.parametrize(
    "limit,expected",
    [("256Mi", 107374182), ("1Gi", 429496729), ("1.5Gi", 644245094), ("512M", 204800000)],
)
def test_the_event_log_bound_is_a_share_of_the_memory_limit(limit, expected):
    config = render(f"resources.limits.memory={limit}").config
    assert config["DR_GATEWAY_EVENT_LOG_MAX_BYTES"] == str(expected)
    assert config["DR_GATEWAY_EVENT_LOG_MAX_EVENTS"] == "100000"


def test_the_default_limit_leaves_the_log_well_under_it(default_render):
    limit = 256 * 1024 * 1024
    assert default_render.gateway["resources"]["limits"]["memory"] == "256Mi"
    log_bytes = int(default_render.config["DR_GATEWAY_EVENT_LOG_MAX_BYTES"])
    # The log's accounting is true within 25 %; even then over half the limit is left.
    assert log_bytes * 1.25 < limit / 2


def test_the_share_and_an_explicit_bound_are_values():
    assert render("config.eventLog.memoryPercent=25").config["DR_GATEWAY_EVENT_LOG_MAX_BYTES"] == str(
        256 * 1024 * 1024 // 4
    )
    assert render("config.eventLog.maxBytes=64MiB").config["DR_GATEWAY_EVENT_LOG_MAX_BYTES"] == "64MiB"


def test_without_a_memory_limit_the_chart_asks_for_one_or_an_explicit_bound(values_file):
    error = render_error(values_file({"resources": {"limits": {"memory": None}}}))
    assert "resources.limits.memory is not set" in error, error


def test_with_a_bus_the_in_memory_log_is_not_configured():
    config = render("bus.url=nats://nats:4222").config
    assert "DR_GATEWAY_EVENT_LOG_MAX_BYTES" not in config
