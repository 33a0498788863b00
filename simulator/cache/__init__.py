"""The paged KV cache: block pool, prefix tree of content units, eviction candidates."""

from .kv_cache import KVCache
from .prefix_tree import Node, PrefixTree

__all__ = ["KVCache", "Node", "PrefixTree"]
