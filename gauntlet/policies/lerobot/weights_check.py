"""A LeRobot policy's weights: streamed into the model where LeRobot's loader would read the whole
file first, and proof that a loaded policy holds its checkpoint's weights.

LeRobot's loaders can leave weights random without raising: lerobot 0.6.1's pi0/pi0.5
`from_pretrained` catches any error while reading or loading `model.safetensors` and returns the
randomly initialised model after a print, and the base class loads with `strict=False`, so a tensor
the file lacks stays random behind a log line. Served, either policy answers well-shaped noise. The
check reads the file's tensors (safetensors: no pickle) and compares them with the model's, before
the replica takes a request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gauntlet.policies.lerobot.config import WEIGHTS_FILE, LeRobotDirError

# Tensors compared value by value (evenly spread over the file's sorted keys): a model that fell back
# to its random initialisation differs in every one of them; a partial load is caught by coverage.
VALUE_SAMPLES = 16
# The prefix pi0/pi0.5's loader adds to every key that lacks it (modeling_pi0.from_pretrained).
MODEL_PREFIX = "model."


def _model_keys(model: Any, file_key: str) -> list[str]:
    """The model's state-dict names `file_key` loads into, with the policy's own key fix-ups applied."""
    import torch

    fix = getattr(model, "_fix_pytorch_state_dict_keys", None)  # pi0/pi0.5: renames of older checkpoints
    fixed = list(fix({file_key: torch.empty(0)}, model.config)) if fix else [file_key]
    if fix is None:
        return fixed
    return [k if k.startswith(MODEL_PREFIX) else MODEL_PREFIX + k for k in fixed]


def _uncovered(state: dict[str, Any], loaded: set[str]) -> list[str]:
    """Model tensors no file tensor was loaded into; a tensor tied to a loaded one (shared storage,
    which safetensors saves once) counts as loaded."""
    loaded_storages = {state[k].untyped_storage().data_ptr() for k in loaded}
    return sorted(k for k in state if k not in loaded
                  and state[k].untyped_storage().data_ptr() not in loaded_storages)


def verify_loaded_weights(model: Any, pretrained_dir: str | Path) -> None:
    """Raises LeRobotDirError naming a tensor when `model` does not hold `pretrained_dir`'s weights:
    a model tensor the file does not fill, or a sampled tensor whose values differ from the file's."""
    import torch
    from safetensors import safe_open

    path = Path(pretrained_dir) / WEIGHTS_FILE
    state = model.state_dict()
    with safe_open(str(path), framework="pt", device="cpu") as weights:
        targets = {key: [k for k in _model_keys(model, key) if k in state] for key in sorted(weights.keys())}
        loaded = {k for names in targets.values() for k in names}
        missing = _uncovered(state, loaded)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise LeRobotDirError(path, shown, f"{len(missing)} model tensor(s) have no weights in the file: "
                                  "LeRobot left them randomly initialised (a checkpoint of another "
                                  "configuration or release?)")
        matched = [key for key, names in targets.items() if names]
        step = max(1, len(matched) // VALUE_SAMPLES)
        for key in matched[::step][:VALUE_SAMPLES]:
            held = state[targets[key][0]]
            if not torch.equal(weights.get_tensor(key).to(held.dtype), held.detach().cpu()):
                raise LeRobotDirError(path, key, "the loaded model's values differ from the file's: LeRobot "
                                      "did not load this checkpoint's weights (its loader fell back to a "
                                      "random initialisation; see the replica's log for its message)")


def stream_weights(model: Any, pretrained_dir: str | Path) -> None:
    """Copies `pretrained_dir`'s tensors into `model` one at a time, mapped as pi0/pi0.5's own loader
    maps them (its key fix-ups, the "model." prefix; the copy casts to the model's dtype). Their loader
    reads the whole file before copying, so a 4.0 B pi0 peaked at 18 GB of RAM; streamed, the peak is
    the model plus one tensor. A file tensor the model has no place for, or of another shape, is an
    error naming it (LeRobot's loader printed it and served the random model)."""
    import torch
    from safetensors import safe_open

    path = Path(pretrained_dir) / WEIGHTS_FILE
    state = model.state_dict()  # tensors sharing the parameters' storage: copy_ fills the model
    with safe_open(str(path), framework="pt", device="cpu") as weights, torch.no_grad():
        for key in weights.keys():
            names = [k for k in _model_keys(model, key) if k in state]
            if not names:
                raise LeRobotDirError(path, key, "the model has no tensor of this name (a checkpoint of another "
                                      "configuration or release?)")
            tensor = weights.get_tensor(key)
            for name in names:
                if state[name].shape != tensor.shape:
                    raise LeRobotDirError(path, key, f"shape {tuple(tensor.shape)} where the model holds "
                                          f"{tuple(state[name].shape)}")
                state[name].copy_(tensor)
