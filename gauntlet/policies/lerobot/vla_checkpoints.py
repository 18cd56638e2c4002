"""Randomly initialised pi0, pi0.5 and SmolVLA checkpoints, their tokenizer and VLM built locally.

The language families load more than weights: SmolVLA builds its VLM from `vlm_model_name` (a
SmolVLM2 config and processor) and its preprocessor loads that tokenizer; pi0/pi0.5's preprocessor
loads the PaliGemma tokenizer (`tokenizer_name`). With no model hub (tests, CI, an offline
cluster) these are written here, small, into the checkpoint directory itself:

    DIR/config.json, model.safetensors, policy_{pre,post}processor*.json|safetensors   save_pretrained
    DIR/tokenizer/   a word-level fast tokenizer (the saved preprocessor's `tokenizer_name`)
    DIR/vlm/         SmolVLA only: a tiny SmolVLM config + processor (`vlm_model_name`)

config.json and the preprocessor name those folders by absolute path, so LeRobot's own loading
code (`from_pretrained`, `PolicyProcessorPipeline.from_pretrained`) reads them as it would read a
hub model. Sizes: SmolVLA's VLM can be made tiny (its config is data); pi0/pi0.5 cannot: 0.6.1
hard-codes PaliGemma gemma_2b + a gemma_300m expert (4.0 B parameters, `paligemma_variant`
"gemma_300m" fails in `embed_prefix`), so they are saved in bfloat16 (`dtype`; 8.9 GB with the vision
tower LeRobot keeps in float32). Building one here peaks near 10 GB (its weights are drawn after the
cast), as does a Gauntlet replica loading it (policy.load_model streams the file in). Run where
LeRobot is importable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gauntlet.keys import (
    ACTION_DIM,
    ACTION_FEATURE,
    DATASET_CAMERAS,
    PROMPT_KEY,
    STATE_DIM,
    STATE_FEATURE,
    STATE_KEY,
)

TOKENIZER_DIR = "tokenizer"
VLM_DIR = "vlm"
PI_TYPES = ("pi0", "pi05")
VLA_TYPES = (*PI_TYPES, "smolvla")
INIT_STD = 0.02  # the random pi family's weights (Gemma's and SigLIP's initializer_range)

# The words the tests' and benchmark's prompts use; any other word is <unk> (a real tokenizer is a
# researcher's, loaded the same way).
WORDS = ("lift", "the", "cube", "pick", "up", "place", "stack", "open", "drawer", "red", "green", "blue",
         "on", "in", "a", "to", "and", "block", "can", "square", "nut", "peg", "door", "push", "move",
         # pi0.5 writes the state into its prompt: "Task: ..., State: 12 200 ...;\nAction: " (256 bins).
         "Task", "State", "Action", ":", ",", ";", *(str(i) for i in range(256)))
SPECIAL = ("<pad>", "<unk>", "<bos>", "<eos>")
# SmolVLM's processor and LeRobot's SmolVLA read these named tokens from the tokenizer.
SMOLVLM_TOKENS = {"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                  "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}

# Small, CPU-fast settings (all fields of LeRobot's own config classes).
VLA_OVERRIDES: dict[str, dict[str, Any]] = {
    # SigLIP patches are 14 px: 56 px images are 4 x 4 = 16 image tokens (224 px: 256).
    "pi0": {"dtype": "bfloat16", "chunk_size": 8, "n_action_steps": 4, "num_inference_steps": 2,
            "image_resolution": (56, 56), "tokenizer_max_length": 12},
    "pi05": {"dtype": "bfloat16", "chunk_size": 8, "n_action_steps": 4, "num_inference_steps": 2,
             "image_resolution": (56, 56), "tokenizer_max_length": 32},
    # The tiny VLM below: 2 text layers; its vision tower takes 32 px images in 8 px patches.
    "smolvla": {"chunk_size": 8, "n_action_steps": 4, "num_steps": 3, "resize_imgs_with_padding": (32, 32),
                "num_vlm_layers": 2, "self_attn_every_n_layers": 2, "tokenizer_max_length": 12,
                "load_vlm_weights": False},
}


def write_tokenizer(out_dir: str | Path, named: dict[str, str] | None = None) -> str:
    """A word-level fast tokenizer (<bos> first, as PaliGemma's) saved for AutoTokenizer. `named`
    adds special tokens the tokenizer exposes by attribute (e.g. `fake_image_token`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    named = named or {}
    vocab = {tok: i for i, tok in enumerate((*SPECIAL, *named.values(), *WORDS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                        bos_token="<bos>", eos_token="<eos>", extra_special_tokens=named)
    tokenizer.save_pretrained(str(out_dir))
    return str(out_dir)


def write_tiny_smolvlm(out_dir: str | Path) -> str:
    """A SmolVLM2-architecture config (2-layer 64-wide text model, 1-layer 32-wide vision tower on
    32 px images) and its processor: what SmolVLA's `vlm_model_name` points at."""
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    out = Path(out_dir)
    write_tokenizer(out, SMOLVLM_TOKENS)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    pad, image = tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids(SMOLVLM_TOKENS["image_token"])
    text = {"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
            "max_position_embeddings": 512, "pad_token_id": pad}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=2, image_token_id=image,
                  pad_token_id=pad).save_pretrained(str(out))
    # 32 px, 4 x 4 patches pixel-shuffled by 2: 4 image tokens per camera.
    edge = {"size": {"longest_edge": 32}, "max_image_size": {"longest_edge": 32}}
    SmolVLMProcessor(image_processor=SmolVLMImageProcessor(do_image_splitting=False, **edge), tokenizer=tokenizer,
                     video_processor=SmolVLMVideoProcessor(**edge), image_seq_len=4).save_pretrained(str(out))
    return str(out)


@contextlib.contextmanager
def _tokenizer_named(local_dir: str) -> Iterator[None]:
    """pi0/pi0.5's processor factory names the hub's PaliGemma tokenizer; while it builds the
    pipeline, that name resolves to `local_dir` (the saved step then names `local_dir` itself)."""
    from lerobot.processor import tokenizer_processor

    hub = tokenizer_processor.AutoTokenizer

    class _Local:
        @staticmethod
        def from_pretrained(name: str, *args: Any, **kwargs: Any) -> Any:
            return hub.from_pretrained(local_dir, *args, **kwargs)

    tokenizer_processor.AutoTokenizer = _Local
    try:
        yield
    finally:
        tokenizer_processor.AutoTokenizer = hub


def vla_quantile_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """pi0.5 normalises state and action by quantiles: q01/q99 beside mean/std/min/max."""
    return {**stats, "q01": stats["min"] * 0.9 + stats["mean"] * 0.1, "q99": stats["max"] * 0.9 + stats["mean"] * 0.1}


def save_random_vla(policy_type: str, out_dir: str, *, image_size: int = 32,
                    cameras: tuple[str, ...] = ("agentview", "wrist"), state_dim: int = STATE_DIM,
                    action_dim: int = ACTION_DIM, seed: int = 0, reference_batch: dict[str, Any] | None = None,
                    noise_seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """Builds a random `policy_type` (one of VLA_TYPES) and saves it with its processors and local
    tokenizer/VLM into out_dir. With `reference_batch` (wire keys, leading dim B, `prompt` strings)
    also answers it with LeRobot's own inference on the model just built, before it is freed (a pi0
    is 8 GB: one build serves as the reference too). Returns {"path", "reference": (B, n, D) | None}."""
    import torch
    from lerobot.policies.factory import get_policy_class, make_policy_config, make_pre_post_processors

    from gauntlet.policies.lerobot.untrained_checkpoints import random_features

    torch.manual_seed(seed)
    out = Path(out_dir)
    inputs, outputs, stats = random_features(image_size, cameras, state_dim, action_dim, seed)
    kwargs = {**VLA_OVERRIDES[policy_type], **overrides}
    if policy_type == "smolvla":
        kwargs.setdefault("vlm_model_name", write_tiny_smolvlm(out / VLM_DIR))
    tokenizer = write_tokenizer(out / TOKENIZER_DIR) if policy_type in PI_TYPES else None
    config = make_policy_config(policy_type, input_features=inputs, output_features=outputs, device="cpu", **kwargs)
    policy = _random_pi(config, seed) if policy_type in PI_TYPES else get_policy_class(policy_type)(config)
    policy.eval()
    if policy_type == "pi05":
        stats = {k: vla_quantile_stats(v) if k in (STATE_FEATURE, ACTION_FEATURE) else v for k, v in stats.items()}
    with _tokenizer_named(tokenizer) if tokenizer else contextlib.nullcontext():
        pre, post = make_pre_post_processors(config, dataset_stats=stats)
    for step in pre.steps:
        if tokenizer and hasattr(step, "tokenizer_name"):
            step.tokenizer_name = tokenizer
    policy.save_pretrained(out_dir)
    pre.save_pretrained(out_dir)
    post.save_pretrained(out_dir)
    answer = None
    if reference_batch is not None:
        answer = vla_reference(policy, out_dir, reference_batch, noise_seed)
    return {"path": out_dir, "reference": answer}


def _random_pi(config: Any, seed: int) -> Any:
    """A pi0/pi0.5 with transformers' initialisation skipped and every parameter drawn here, in the dtype
    LeRobot casts it to: 34 s and 9.3 GB on 2 cores, where LeRobot's own build initialises 4.0 B
    float32 parameters first (150 s, 17 GB). Uniform draws with the 0.02 standard deviation of Gemma's and
    SigLIP's initialisers; LayerNorm scales 1 (Gemma's RMSNorm scales by 1 + weight, so small is right)."""
    import torch
    from lerobot.policies.factory import get_policy_class

    from gauntlet.policies.lerobot.policy import initialisation_skipped

    with initialisation_skipped(config.type):
        policy = get_policy_class(config.type)(config)
    generator = torch.Generator().manual_seed(seed)
    bound = INIT_STD * 3**0.5  # U(-b, b) has standard deviation b / sqrt(3)
    with torch.no_grad():
        for module in policy.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, torch.nn.LayerNorm):
                    param.fill_(1.0 if name == "weight" else 0.0)
                else:
                    param.uniform_(-bound, bound, generator=generator)
    return policy


def raw_batch(config: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """Gauntlet wire keys (leading dim B) -> LeRobot's raw batch, written without Gauntlet's adapter."""
    import numpy as np
    import torch

    raw: dict[str, Any] = {STATE_FEATURE: torch.tensor(np.asarray(batch[STATE_KEY], np.float32))}
    for key in config.image_features:
        images = torch.tensor(np.asarray(batch[DATASET_CAMERAS[key.rsplit(".", 1)[-1]]]))
        raw[key] = images.permute(0, 3, 1, 2).float() / 255.0
    raw["task"] = [str(p) for p in batch[PROMPT_KEY]]
    return raw


def vla_reference(policy: Any, path: str, batch: dict[str, Any], noise_seed: int = 0) -> Any:
    """LeRobot's own chunk call on `batch` with the processors loaded from `path`: (B, n_action_steps, D),
    every request starting its flow from the noise Gauntlet's adapter draws from `noise_seed`."""
    import torch
    from lerobot.policies.factory import make_pre_post_processors

    from gauntlet.policies.lerobot.policy import initial_noise

    pre, post = make_pre_post_processors(policy.config, pretrained_path=path)
    with torch.inference_mode():
        policy.reset()
        noise = initial_noise(policy.config, len(batch[PROMPT_KEY]), noise_seed)
        chunk = policy.predict_action_chunk(pre(raw_batch(policy.config, batch)), noise=noise)
        return post(chunk[:, : policy.config.n_action_steps]).numpy()
