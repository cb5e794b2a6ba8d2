"""Reading confstream's metrics the public way, by their exported names (docs/operations.md).

Tests and tools read the Prometheus default registry through its public API
(``REGISTRY.get_sample_value`` and ``collect()``), never a metric object's private fields, so
what they check is what a scrape of ``/metrics`` would show.
"""

from __future__ import annotations

from prometheus_client import REGISTRY

#: What the Prometheus client appends to a metric family's name in its sample names.
_SUFFIXES = ("", "_total", "_created", "_count", "_sum", "_bucket", "_gcount", "_gsum", "_info")


def sample(name: str, **labels: str) -> float:
    """The current value of the sample ``name`` with exactly ``labels`` (a counter's sample
    name ends in ``_total``). 0.0 while a labelled child has not been created yet; a name no
    registered metric exports raises :class:`KeyError`, so a typo cannot pass as zero."""
    value = REGISTRY.get_sample_value(name, labels)
    if value is not None:
        return float(value)
    if not any(
        name == family.name + suffix for family in REGISTRY.collect() for suffix in _SUFFIXES
    ):
        raise KeyError(f"no registered metric exports {name!r}")
    return 0.0
