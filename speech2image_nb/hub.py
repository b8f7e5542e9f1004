"""Whether the Hugging Face Hub can be reached, asked once and quickly before a model is fetched.

When the hub does not answer, ``huggingface_hub`` retries with back-off before it falls back to its
cache: about 25 s against a refused port, and minutes where packets are dropped (each try may wait
60 s). The image engines and Whisper ask here first, with one short request. Offline
(``HF_HUB_OFFLINE``) or unreachable, they read the cache only, so that a missing model fails at once
with a message naming the setting to set (``S2I_MODEL_DIR``, ``S2I_WHISPER_MODEL``), and a cached
one loads without waiting for the network.
"""

from __future__ import annotations

import logging

__all__ = ["MODEL_DIR_HINT", "PROBE_TIMEOUT_S", "hub_endpoint", "hub_unavailable"]

log = logging.getLogger(__name__)

#: (connect, read) seconds of the one request that tells whether the hub answers
PROBE_TIMEOUT_S = (3.0, 3.0)

#: how to go on without the hub, for every missing-model message of the image engines
MODEL_DIR_HINT = "set S2I_MODEL_DIR (or --model-dir) to a folder that holds the model's files"


def hub_endpoint() -> str:
    """The hub's base URL (``HF_ENDPOINT``, read by ``huggingface_hub`` when it is first imported)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def hub_unavailable(*, timeout_s: tuple[float, float] = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be used now ("HF_HUB_OFFLINE is set", "... cannot be reached"), or ``None``.

    Any HTTP answer, even an error status, counts as reachable: only a refused, reset or silent
    connection means the network is not there. Proxies configured in the environment are used.
    """
    import requests
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = hub_endpoint()
    try:
        requests.head(endpoint, timeout=timeout_s, allow_redirects=False).close()
    except requests.RequestException as exc:
        log.info("the Hugging Face Hub at %s cannot be reached: %s", endpoint, exc)
        return f"the Hugging Face Hub at {endpoint} cannot be reached"
    return None
