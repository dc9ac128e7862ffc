"""Checkpoints without full unpickling, strict loading, and quiet hub downloads: what every
family's loader shares."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn


class ModelLoadError(RuntimeError):
    """A model or checkpoint could not be loaded; the message says what to do."""


_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "ema")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file or a ``torch.save`` file (``weights_only=True``).

    Common wrappers (``{"state_dict": ...}``, ``{"model": ...}``) and DataParallel's ``module.``
    prefix are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise ModelLoadError(
            "reading .safetensors needs the safetensors package: pip install safetensors"
        ) from None
    except Exception as error:  # torch / safetensors raise many types for corrupt or unsafe files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(
            f"checkpoint {path}: cannot be read as safetensors or a weights-only torch file ({first_line})"
        ) from None
    for key in _WRAPPER_KEYS:
        inner = state.get(key) if isinstance(state, dict) else None
        if isinstance(inner, dict):
            state = inner
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"checkpoint {path}: does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` with a one-line error on any mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if reshaped:
        key = reshaped[0]
        problems.append(
            f"{len(reshaped)} tensors of another shape (e.g. {key}: {tuple(state[key].shape)} in the file, "
            f"{tuple(expected[key].shape)} in the model)"
        )
    if problems:
        raise ModelLoadError(
            f"{source} does not fit {type(model).__name__}: {'; '.join(problems)}; "
            "check --model names the architecture the weights were trained for"
        )
    model.load_state_dict(state, strict=True)


def offline_error(spec: str, error: Exception, hint: str) -> ModelLoadError:
    """One line for a failed download: what failed and what to do instead (``hint``); the
    reason's first line whole (a message is never cut)."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelLoadError(f"could not load {spec!r} ({type(error).__name__}: {reason}); offline? {hint}")


#: seconds to wait for the model hub to answer before saying it cannot be reached
HUB_TIMEOUT_S = 4.0


def check_hub(spec: str, repo_id: str | None, files: tuple[str, ...], hint: str) -> None:
    """Fail at once, in one line, when ``spec``'s weights would come from the Hugging Face hub
    (``repo_id``) and none of ``files`` is in the local cache while the hub is switched off
    (``HF_HUB_OFFLINE``) or does not answer within ``HUB_TIMEOUT_S`` (``HF_ENDPOINT`` and
    proxies honoured): the libraries' own retries take a minute before they give up. A hub that
    answers, even with an error, is left to the library to report."""
    if repo_id is None:
        return
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:
        return
    if any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in files):
        return  # cached: no network needed
    cache = constants.HF_HUB_CACHE
    where = f"the weights go to {cache}; fetch them on a machine that is online and copy that folder here"
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"{spec}: its pretrained weights ({repo_id}) are not in the cache and HF_HUB_OFFLINE is set; "
            f"{hint} ({where})"
        )
    reason = _unanswered(f"{constants.ENDPOINT.rstrip('/')}/api/models/{repo_id}")
    if reason is not None:
        raise ModelLoadError(
            f"{spec}: could not reach {constants.ENDPOINT} within {HUB_TIMEOUT_S:.0f} s to download its "
            f"pretrained weights ({reason}); offline? {hint} ({where})"
        )


def _unanswered(url: str) -> str | None:
    """Why ``url``'s server did not answer a HEAD request within ``HUB_TIMEOUT_S`` (proxies
    honoured), or ``None`` when it answered, even with an error."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HUB_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as error:  # URLError, timeouts, refused connections, a bad endpoint
        return str(getattr(error, "reason", None) or error)


def check_download(spec: str, url: str, cached: Path, hint: str) -> None:
    """Fail at once, in one line, when ``spec``'s weights would be downloaded from ``url`` (not
    the Hugging Face hub: torchvision's) and are not at ``cached`` while ``url``'s server does not
    answer within ``HUB_TIMEOUT_S`` (proxies honoured): the download itself would wait on the
    network's own timeouts. A server that answers, even with an error, is left to the library."""
    if cached.is_file():
        return
    import urllib.parse

    host = urllib.parse.urlsplit(url).netloc or url
    where = f"the weights go to {cached.parent}; fetch {url} on a machine that is online and put it there"
    reason = _unanswered(url)
    if reason is not None:
        raise ModelLoadError(
            f"{spec}: could not reach {host} within {HUB_TIMEOUT_S:.0f} s to download its pretrained "
            f"weights ({reason}); offline? {hint} ({where})"
        )


@contextmanager
def quiet_hub():
    """Keep the hub client's retry warnings, transformers' load reports and progress bars off the
    console; the caller reports one line."""
    # the root logger too: open_clip warns there ("No pretrained weights loaded") when vitflow
    # loads a checkpoint itself
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "transformers", None)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    bars = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    progress = _transformers_progress(False)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if bars is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = bars
        if progress:
            _transformers_progress(True)


def _transformers_progress(enabled: bool) -> bool:
    """Turn transformers' progress bars on or off if it is imported; returns whether they were on."""
    import sys

    module = sys.modules.get("transformers.utils.logging")
    if module is None:
        return False
    was = module.is_progress_bar_enabled()
    (module.enable_progress_bar if enabled else module.disable_progress_bar)()
    return was
