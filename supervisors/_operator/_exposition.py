"""Metric families as they are built, and their Prometheus text.

Theory of operation
-------------------
:mod:`supervisors._operator._metrics` fills :class:`_Family` objects from a snapshot; this
module writes them as the Prometheus text format 0.0.4, byte for byte what prometheus-client's
``generate_latest`` writes for the same families (:func:`_client_family` builds those), so the
admin API can write a large exposition a slice at a time without prometheus-client's per-sample
objects.

A family is a gauge, a counter (written with the ``_total`` suffix) or a histogram (its
``_bucket`` samples, cumulative, each with an ``le`` label and ``+Inf`` last, then ``_count``
and ``_sum``).  Labels every sample of the exposition carries (the ``instance`` label) are given
to the writer once (``const``), not stored with each sample.  Labels are written sorted by name,
as ``generate_latest`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__: list[str] = []

# Lines joined into one chunk of text at a time.
_CHUNK_LINES: Final = 512


class _Family:
    """One metric family being built.

    Its samples are kept flat (``label_values`` holds each sample's label values in turn,
    ``values`` its value, or for a histogram its cumulative bucket counts and then its sum)
    rather than as a tuple per sample: strings and floats are not tracked by the garbage
    collector, so building tens of thousands of samples does not trigger the collections (full
    ones included) that retained tuples would.
    """

    __slots__ = ("bounds", "documentation", "kind", "label_values", "labels", "name", "values")

    def __init__(
        self,
        name: str,
        kind: str,
        documentation: str,
        labels: Sequence[str] = (),
        bounds: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.kind = kind  # "gauge", "counter" or "histogram"
        self.documentation = documentation
        self.labels = tuple(labels)
        #: A histogram's ``le`` values, ``"+Inf"`` last (empty for the other kinds).
        self.bounds = tuple(bounds)
        self.label_values: list[str] = []
        self.values: list[float] = []

    def add(self, label_values: tuple[str, ...], value: float) -> None:
        self.label_values.extend(label_values)
        self.values.append(value)

    def add_histogram(
        self, label_values: tuple[str, ...], cumulative: Sequence[float], total: float
    ) -> None:
        """Add one histogram: its cumulative count per bucket (``+Inf`` last) and its sum."""
        if len(cumulative) != len(self.bounds):
            raise ValueError(f"{self.name}: {len(cumulative)} counts for {len(self.bounds)} le")
        self.label_values.extend(label_values)
        self.values.extend(cumulative)
        self.values.append(total)

    def __len__(self) -> int:
        """The number of samples added (a histogram counts as one)."""
        return len(self.values) // (len(self.bounds) + 1 if self.bounds else 1)

    def samples(self) -> Iterator[tuple[list[str], float]]:
        """Each sample's label values and value (gauges and counters)."""
        width = len(self.labels)
        for i, value in enumerate(self.values):
            yield self.label_values[i * width : (i + 1) * width], value

    def histograms(self) -> Iterator[tuple[list[str], list[float], float]]:
        """Each histogram's label values, cumulative bucket counts and sum."""
        width = len(self.labels)
        stride = len(self.bounds) + 1
        values = self.values
        for i in range(len(self)):
            base = i * stride
            yield (
                self.label_values[i * width : (i + 1) * width],
                values[base : base + stride - 1],
                values[base + stride - 1],
            )


def _gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> _Family:
    return _Family(name, "gauge", documentation, labels)


def _counter(name: str, documentation: str, labels: Sequence[str] = ()) -> _Family:
    return _Family(name, "counter", documentation, labels)


def _histogram(
    name: str, documentation: str, bounds: Sequence[float], labels: Sequence[str] = ()
) -> _Family:
    """A histogram family whose buckets end at ``bounds`` (seconds), and ``+Inf``."""
    from prometheus_client.utils import floatToGoString

    text: Callable[[float], str] = floatToGoString
    return _Family(name, "histogram", documentation, labels, [*map(text, bounds), "+Inf"])


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Writer:
    """Writes families as Prometheus text, as prometheus-client's ``generate_latest`` does.

    ``const`` are labels every sample gets (name, value).  Lines are joined into chunks as
    they are written, so the final join is of a few hundred strings, not of tens of thousands
    (which alone would hold the loop for milliseconds).
    """

    __slots__ = ("chunks", "const", "float_text", "parts")

    def __init__(self, const: Sequence[tuple[str, str]] = ()) -> None:
        from prometheus_client.utils import floatToGoString

        self.float_text: Callable[[float], str] = floatToGoString
        self.const = tuple(const)
        self.parts: list[str] = []
        self.chunks: list[bytes] = []

    def flush(self) -> None:
        # Chunks are encoded as they are made: the last step then only joins bytes.
        self.chunks.append("".join(self.parts).encode("utf-8"))
        self.parts.clear()

    def header(self, family: _Family) -> None:
        name = family.name + "_total" if family.kind == "counter" else family.name
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        self.parts.append(f"# HELP {name} {doc}\n# TYPE {name} {family.kind}\n")

    def _plan(self, family: _Family) -> tuple[int, list[str], list[int], list[str]]:
        """How to write a sample's labels: the family's own label count, every label name in
        the order written (generate_latest sorts them by name), where each one's value is in
        a sample's values followed by the constant ones, and the constant values escaped."""
        names = family.labels + tuple(key for key, _ in self.const)
        order = sorted(range(len(names)), key=names.__getitem__)
        fixed = [_escape(value) for _, value in self.const]
        return len(family.labels), [names[i] for i in order], order, fixed

    def samples(self, family: _Family) -> Iterator[None]:
        """Write the family's samples, yielding after each (a histogram is one)."""
        if family.kind == "histogram":
            yield from self._histograms(family)
            return
        name = family.name + "_total" if family.kind == "counter" else family.name
        width, keys, order, fixed = self._plan(family)
        parts, text, flat = self.parts, self.float_text, family.label_values
        for n, value in enumerate(family.values):
            if not keys:
                parts.append(f"{name} {text(value)}\n")
            elif not fixed:
                base = n * width
                labels = ",".join(
                    f'{key}="{_escape(flat[base + i])}"' for key, i in zip(keys, order, strict=True)
                )
                parts.append(f"{name}{{{labels}}} {text(value)}\n")
            else:
                values = flat[n * width : (n + 1) * width] + fixed
                labels = ",".join(
                    f'{key}="{_escape(values[i])}"' if i < width else f'{key}="{values[i]}"'
                    for key, i in zip(keys, order, strict=True)
                )
                parts.append(f"{name}{{{labels}}} {text(value)}\n")
            if len(parts) >= _CHUNK_LINES:
                self.flush()
            yield

    def _histograms(self, family: _Family) -> Iterator[None]:
        name = family.name
        width, keys, order, fixed = self._plan(family)
        # The bucket lines' labels are the same with ``le`` put in its sorted place.
        split = sum(1 for key in keys if key < "le")
        parts, text = self.parts, self.float_text
        bounds = family.bounds
        for label_values, cumulative, total in family.histograms():
            values = label_values + fixed
            pairs = [
                f'{key}="{_escape(values[i])}"' if i < width else f'{key}="{values[i]}"'
                for key, i in zip(keys, order, strict=True)
            ]
            plain = ",".join(pairs)
            head = "".join(pair + "," for pair in pairs[:split])
            tail = "".join("," + pair for pair in pairs[split:])
            for le, count in zip(bounds, cumulative, strict=True):
                parts.append(f'{name}_bucket{{{head}le="{le}"{tail}}} {text(count)}\n')
            labels = f"{{{plain}}}" if plain else ""
            parts.append(f"{name}_count{labels} {text(cumulative[-1])}\n")
            parts.append(f"{name}_sum{labels} {text(total)}\n")
            if len(parts) >= _CHUNK_LINES:
                self.flush()
            yield

    def text(self) -> bytes:
        self.flush()
        return b"".join(self.chunks)


def _client_family(family: _Family, const: Sequence[tuple[str, str]] = ()) -> Metric:
    """The prometheus-client family of ``family`` (what ``AuraCollector`` yields)."""
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    labels = family.labels + tuple(key for key, _ in const)
    fixed = [value for _, value in const]
    if family.kind == "histogram":
        histogram = HistogramMetricFamily(family.name, family.documentation, labels=labels)
        for values, cumulative, total in family.histograms():
            buckets = list(zip(family.bounds, cumulative, strict=True))
            histogram.add_metric(values + fixed, buckets, total)
        return histogram
    metric: CounterMetricFamily | GaugeMetricFamily
    if family.kind == "counter":
        metric = CounterMetricFamily(family.name, family.documentation, labels=labels)
    else:
        metric = GaugeMetricFamily(family.name, family.documentation, labels=labels)
    for values, value in family.samples():
        metric.add_metric(values + fixed, value)
    return metric
