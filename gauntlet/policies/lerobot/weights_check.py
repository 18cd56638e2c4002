"""Proof that a loaded LeRobot policy holds its checkpoint's weights.

LeRobot's loaders can leave weights random without raising: lerobot 0.6.1's pi0/pi0.5
`from_pretrained` catches any error while reading or loading `model.safetensors` and returns the
randomly initialised model after a print, and the base class loads with `strict=False`, so a tensor
the file lacks stays random behind a log line. Served, either policy answers well-shaped noise. This
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
