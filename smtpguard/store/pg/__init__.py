"""The fleet's shared store in PostgreSQL (``store.backend = "postgresql"``).

One module per job: :mod:`.schema` (tables and their migrations), :mod:`.connect`
(the driver and its connections), :mod:`.apply` (an outbox operation
applied to PostgreSQL's state under the fleet lock), :mod:`.pull` (changes since
a sequence number written into a node's SQLite cache), :mod:`.replicator` (the
task that pushes, listens and pulls), :mod:`.read` (what operators read straight
from PostgreSQL: the fleet's history) and :mod:`.copy` (moving a list between
backends).

psycopg is imported lazily, only by these modules: a node on the SQLite default
needs no PostgreSQL driver (install the ``fleet`` extra for this backend).
"""
