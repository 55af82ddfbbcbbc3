"""tips.index: vector indexes over TIPS embeddings (faiss): plan by memory, build, tune, grow, search — in one
embedding space. May import: inference, models (query embedding), formats (optional dependencies), io.

- :mod:`.space`: which model, vector kind and width an index holds; queries from another space are refused;
- :mod:`.planning`: the most exact faiss factory that fits a memory budget;
- :mod:`.vector_index`: :class:`Index` (build, add, save, open, search);
- :mod:`.queries`: text and image queries embedded in a model's space; :mod:`.sheet`: contact sheets.

faiss and pyarrow are the ``index`` extra (``pip install 'tips[index]'``), imported on use.
"""

from .planning import IndexPlan, parse_memory, plan_index
from .space import EmbeddingSpace, SpaceMismatchError, check_same_space
from .vector_index import SearchResult, Index, normalised

__all__ = ["EmbeddingSpace", "IndexPlan", "SearchResult", "SpaceMismatchError", "Index", "check_same_space",
           "normalised", "parse_memory", "plan_index"]
