"""More like this: the k nearest rows of a run by embedding (``mergerscan similar``).

``similar(OUT, like=ID, k=20)`` or ``similar(OUT, like_file="stamp.jpg")`` -> :class:`SimilarResult`;
``write_page(result)`` writes the neighbour gallery.  The index (faiss) is built once per run and
cached under ``OUT/similar/`` (:mod:`.index` says how it scales to 10^8 rows).
"""

from .index import VectorIndex, load_index, plan_index
from .page import write_page
from .search import SimilarResult, similar
from .vectors import EMBEDDING_COLUMN, SimilarError, open_run

__all__ = [
    "EMBEDDING_COLUMN",
    "SimilarError",
    "SimilarResult",
    "VectorIndex",
    "load_index",
    "open_run",
    "plan_index",
    "similar",
    "write_page",
]
