"""Upstream's image gauges that a launcher sends: the image cache's ZooKeeper
queues, ``nodepool.launcher.<hostname>.zk.image_cache.{event,playback}_queue``,
from the launcher's own image cache while a provider boots diskimages."""

from __future__ import annotations

import socket

from nodepool.zk.images import ImageCache
from tests.fixtures.fakecloud import wait_for
from tests.test_launcher import run_launcher, store  # noqa: F401 - fixtures
from tests.test_launcher_diskimages import IMAGES, dib_config
from tests.test_stats import statsd  # noqa: F401 - fixture


def test_image_cache_reports_its_queues(zk):
    cache = ImageCache(zk)
    assert cache.queue_sizes() == {"event_queue": 0, "playback_queue": 0}
    cache.start()
    try:
        assert cache.wait_synced(10)
        sizes = cache.queue_sizes()
        assert set(sizes) == {"event_queue", "playback_queue"}
        assert all(isinstance(v, int) and v >= 0 for v in sizes.values())
    finally:
        cache.stop()


def test_launcher_sends_the_image_cache_queue_gauges(tmp_path, make_fakecloud, zk_settings,
                                                     store, run_launcher, statsd,  # noqa: F811
                                                     monkeypatch):
    # Busy queues cannot be made on demand; the cache says what it holds.
    monkeypatch.setattr(ImageCache, "queue_sizes",
                        lambda self: {"event_queue": 3, "playback_queue": 4}, raising=False)
    cloud = make_fakecloud(IMAGES)
    launcher = run_launcher(dib_config(tmp_path, cloud, zk_settings))
    assert launcher.images is not None
    root = f"nodepool.launcher.{socket.gethostname()}.zk.image_cache"
    wait_for(lambda: 3.0 in statsd.values(f"{root}.event_queue", "g"), 15,
             what="image cache event queue gauge")
    assert 4.0 in statsd.values(f"{root}.playback_queue", "g")
