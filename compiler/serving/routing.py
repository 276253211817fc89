"""The routing key: which user a request is for, sent beside the request so a proxy can keep a user on one replica.

    headers = {USER_KEY_HEADER: user_key(inputs, contract)}     # what ScoringClient sends with every request

A user's history rows are cached by the replica that computed them (compiler/runtime/row_cache.py); a proxy that
hashes this key onto its replicas (consistent hashing: compiler.serving.proxy, docs/deploy/) sends each user's
requests to the replica holding that user's rows, so each replica's cache needs only its own users' working set.
The key is the caller's user id where it has one; otherwise a stable hash of the request's user inputs (the
contract's `user_inputs`, STCA's user_features), which stay the same between a user's visits while the history
grows. Users whose inputs are equal share a key: they land on the same replica, which costs balance, not exactness.
"""

import hashlib

import numpy as np

from compiler.core.contract import Contract

USER_KEY_HEADER = "stca-user-key"  # an HTTP header, and gRPC metadata (lower case, as gRPC requires)


def user_key(inputs: dict, contract: Contract, user_id: str | int | None = None) -> str:
    """The routing key of a request: `user_id` as text where given, else 16 hex digits hashing the user inputs'
    names, dtypes, shapes and bytes ("" where the contract names none: the proxy then spreads such requests)."""
    if user_id is not None:
        return str(user_id)
    names = [name for name in contract.user_inputs if name in inputs]
    if not names:
        return ""
    digest = hashlib.blake2b(digest_size=8)
    for name in names:
        value = np.ascontiguousarray(inputs[name])
        digest.update(f"{name}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def nginx_variable(header: str = USER_KEY_HEADER) -> str:
    """The nginx variable holding a request header's value (ingress-nginx's upstream-hash-by takes it too)."""
    return "$http_" + header.lower().replace("-", "_")
