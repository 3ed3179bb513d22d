"""`mmfuse embed`: item embeddings written as resumable Parquet parts and the MMRec layout (`writer.py`), read from
a manifest or shards (`sources.py`). Needs pyarrow; `mmfuse.load(...).embed` does not."""

from .sources import Item, ManifestSource, ShardSource
from .writer import ExportOptions, export_embeddings

__all__ = ["ExportOptions", "Item", "ManifestSource", "ShardSource", "export_embeddings"]
