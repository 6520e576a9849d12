"""The Hugging Face hub, bounded: a model that needs it fails within seconds when it cannot be reached.

Before the first hub call of a process (an hf-hub: backbone, or pretrained weights fetched by timm), one request to
the hub's endpoint (HF_ENDPOINT, else https://huggingface.co; the proxy variables apply) with a TIMEOUT-second limit.
No answer: the hub client is switched to its offline mode (huggingface_hub's HF_HUB_OFFLINE), so files already in the
local cache (HF_HOME) still load and missing ones fail at once, instead of the client's retries (about a minute).
HF_HUB_OFFLINE=1 in the environment skips the check.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from amf import one_line

TIMEOUT = 5.0  # seconds for the one reachability request
_checked: dict = {}  # this process's answer: {"why": None (reachable) or why not}


def needs_hub(mcfg: dict, pretrained: bool) -> bool:
    """Whether building this backbone talks to the hub: an hf-hub: name (its config lives there), or pretrained
    weights without a local file."""
    return mcfg["backbone"].startswith("hf-hub:") or (bool(pretrained) and not mcfg.get("weights"))


def unreachable(timeout: float = TIMEOUT) -> str | None:
    """None when the hub answers (any HTTP status), else why not, in a few words. Asked once per process; when
    the hub does not answer, the hub client goes offline (the local cache still serves)."""
    import huggingface_hub.constants as hf

    if "why" in _checked:  # this process asked already
        return _checked["why"]
    if hf.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    why = None
    try:
        urllib.request.urlopen(urllib.request.Request(hf.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:  # it answered: reachable
        pass
    except (urllib.error.URLError, OSError, ValueError) as e:
        why = f"{hf.ENDPOINT}: {one_line(getattr(e, 'reason', e))[:120]}"
        os.environ["HF_HUB_OFFLINE"] = "1"  # child processes (--parallel) inherit it
        hf.HF_HUB_OFFLINE = True  # read at each call by the hub client
    _checked["why"] = why
    return why


def offline_error(name: str, why: str) -> str:
    """The whole message for a backbone whose files are neither reachable nor in the local cache."""
    import timm

    hub_name = name.startswith("hf-hub:")
    arch = name[len("hf-hub:") :].split("/")[-1].split(".")[0] if hub_name else name.split(".")[0]
    example = f" (here {arch})" if timm.is_model(arch) else ""
    fix = (
        f"give model.backbone as the timm architecture name{example} and model.weights a local file of its weights"
        if hub_name
        else f"set model.weights to a local file of its weights and model.backbone to the architecture name{example}, "
        "or model.pretrained: false"
    )
    return (
        f"model {name} needs files from the Hugging Face hub, which cannot be reached ({why}), and they are not in "
        f"the local cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}): {fix}; or fetch them once where the "
        "hub is reachable (python -m training.inspect models CONFIG) and bring the cache along"
    )
