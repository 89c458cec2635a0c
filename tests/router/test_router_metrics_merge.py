"""``merge_expositions``: several workers' Prometheus texts as one valid exposition."""

from __future__ import annotations

from skewless.router.metrics import VersionStats, merge_expositions, render_prometheus


def worker_text(worker: int, requests: int) -> str:
    s = VersionStats("shop", "v1")
    for _ in range(requests):
        s.record(200, 0.001)
    return render_prometheus([(s, 60.0)], [("i0", "shop", "v1", 0, True)], 3, 0.0, worker)


def test_each_family_once_with_every_workers_samples_together() -> None:
    a, b = worker_text(0, 3), worker_text(1, 5)
    merged = merge_expositions([a, b])
    lines = merged.splitlines()
    helps = [x for x in lines if x.startswith("# HELP ")]
    types = [x for x in lines if x.startswith("# TYPE ")]
    assert len(helps) == len(set(helps)) == len(types) == len(set(types))
    assert set(types) == {x for x in a.splitlines() if x.startswith("# TYPE ")}
    # every sample of both texts is there, and a family's samples follow its TYPE line
    samples = [x for x in (a + b).splitlines() if not x.startswith("#")]
    assert sorted(x for x in lines if not x.startswith("#")) == sorted(samples)
    family = None
    for line in lines:
        if line.startswith("# TYPE "):
            family = line.split()[2]
        elif not line.startswith("#"):
            assert family is not None and line.startswith(family), line
    assert 'skewless_requests_total{app="shop",version="v1",status="200",worker="0"} 3' in lines
    assert 'skewless_requests_total{app="shop",version="v1",status="200",worker="1"} 5' in lines


def test_a_family_only_one_worker_has_and_stray_samples() -> None:
    one = "# HELP x_total X.\n# TYPE x_total counter\nx_total{worker=\"0\"} 1\n"
    two = 'stray{worker="1"} 2\n# TYPE y gauge\ny{worker="1"} 4\n# TYPE x_total counter\n'
    two += 'x_total{worker="1"} 7\n'
    merged = merge_expositions([one, two]).splitlines()
    assert merged == [
        "# HELP x_total X.",
        "# TYPE x_total counter",
        'x_total{worker="0"} 1',
        'x_total{worker="1"} 7',
        'stray{worker="1"} 2',
        "# TYPE y gauge",
        'y{worker="1"} 4',
    ]
    assert merge_expositions([]) == "" and merge_expositions([""]) == ""
