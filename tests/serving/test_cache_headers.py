"""The cache headers of a generation response."""

from cache.service import CacheHit
from serving.hits import cache_headers


def test_hit_headers_name_layer_and_store():
    l1 = cache_headers("HIT", CacheHit({}, "exact", None, 3.7, "k", "l1"))
    assert l1 == {"x-cache": "HIT", "x-cache-layer": "exact", "x-cache-store": "l1", "age": "3"}
    semantic = cache_headers("HIT", CacheHit({}, "semantic", 0.91234, 0.0, "k"))
    assert semantic["x-cache-store"] == "redis" and semantic["x-cache-similarity"] == "0.9123"
    assert cache_headers("MISS") == {"x-cache": "MISS"}
