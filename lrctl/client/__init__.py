"""THE client of the lrctl controller, for scripts, notebooks, the CLI and the workers.

::

    from lrctl.client import Client, ClientError

    with Client() as client:                  # LRCTL_ADDRESS, LRCTL_TOKEN, LRCTL_TLS_*
        client.override("run-42", "lr /= 2", reason="loss spike")
        client.history("run-42")              # a table in a notebook

Channel options, authentication (a bearer token; TLS and mutual TLS), the mapping of every
error to one :class:`ClientError`, and the reconnecting :class:`WatchFollower` live here
and nowhere else. Conversions to and from protobuf are in :mod:`lrctl.convert`.
"""

from lrctl.client._client import Client, CreateResult, OverrideResult, WatchStream
from lrctl.client._errors import TRANSIENT_CODES, ClientError
from lrctl.client._follower import FollowUpdate, WatchFollower
from lrctl.client._tls import TLSConfig

__all__ = [
    "TRANSIENT_CODES",
    "Client",
    "ClientError",
    "CreateResult",
    "FollowUpdate",
    "OverrideResult",
    "TLSConfig",
    "WatchFollower",
    "WatchStream",
]
