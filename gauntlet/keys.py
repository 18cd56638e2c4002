"""The wire vocabulary: observation and action keys, and the dataset columns they are stored under.

Keys follow openpi's naming so that its clients and servers interoperate with Gauntlet's. Every
module that reads or writes one of these imports it from here; nothing spells them again.
"""

from __future__ import annotations

# The environment's vectors: the state it observes and the action it steps with.
STATE_DIM = 8  # eef position (3) + eef axis-angle (3) + gripper finger joints (2)
ACTION_DIM = 7  # OSC delta position (3) + delta axis-angle (3) + gripper (-1 open, +1 close)
GRIPPER_INDEX = ACTION_DIM - 1  # the action's gripper entry

# Observations (one request; a batch adds a leading dimension B).
STATE_KEY = "observation/state"  # (8,) float32: eef position (3), eef axis-angle (3), gripper (2)
IMAGE_KEY = "observation/image"  # (H, W, 3) uint8, agent-view camera
WRIST_IMAGE_KEY = "observation/wrist_image"  # (H, W, 3) uint8, wrist camera
PROMPT_KEY = "prompt"  # str: the language instruction
# Privileged observations, read only by policies that declare them (the scripted oracle).
OBJECT_STATE_KEY = "observation/object_state"  # (K,) float32: task objects' poses
SIM_STATE_KEY = "observation/sim_state"  # {name: array}: the full simulator state
# Optional strings. Batched replicas serve many episodes at once, so a recurrent policy's memory is
# keyed by the episode's id rather than kept "in the connection".
EPISODE_ID_KEY = "episode_id"
TASK_KEY = "task"
OPTIONAL_STR_KEYS = (PROMPT_KEY, EPISODE_ID_KEY, TASK_KEY)

# Responses and training batches.
ACTIONS_KEY = "actions"  # (H, D) per request, (B, H, D) per batch
ACTION_IS_PAD_KEY = "action_is_pad"  # (B, H) bool: chunk positions past the episode end
# A policy with per-episode memory (PolicyMetadata.episode_memory) answers, per request, how many
# calls of that episode_id it has answered including this one: (B,) int per batch, an int per request.
# A client that counts its own calls sees a lost memory (a restarted replica, another replica, an
# evicted episode) as a mismatch, instead of getting actions computed from a fresh state.
EPISODE_CALLS_KEY = "episode_calls"
# The serving layer's per-request timing, added to each answer: {"infer_ms", "queue_wait_ms", "batch_size"}.
SERVER_TIMING_KEY = "server_timing"

# The largest request or answer any protocol carries (HTTP body, WebSocket frame, gRPC message), in
# bytes: Gauntlet's servers refuse bigger requests and its clients refuse bigger answers, unread.
MAX_MESSAGE_BYTES = 16 * 2**20

# Dataset columns (LeRobot's names) of the wire keys above.
STATE_FEATURE = "observation.state"
ACTION_FEATURE = "action"
# Optional: the privileged object state, in datasets collected with `--object-state` (one task's width).
OBJECT_STATE_FEATURE = "observation.object_state"
IMAGE_FEATURE_PREFIX = "observation.images."  # + a camera name: that camera's image column
DATASET_COLUMNS: dict[str, str] = {STATE_KEY: STATE_FEATURE, ACTIONS_KEY: ACTION_FEATURE,
                                   OBJECT_STATE_KEY: OBJECT_STATE_FEATURE}
# The episodes table keeps each episode's language instruction under the wire key's own name.
PROMPT_COLUMN = PROMPT_KEY

# Cameras: robosuite's camera names and the dataset's camera names, each mapped to its wire key.
ROBOSUITE_CAMERAS: dict[str, str] = {"agentview": IMAGE_KEY, "robot0_eye_in_hand": WRIST_IMAGE_KEY}
DATASET_CAMERAS: dict[str, str] = {"agentview": IMAGE_KEY, "wrist": WRIST_IMAGE_KEY}


def image_feature(camera: str) -> str:
    """The dataset column (LeRobot's feature name) of one camera's images, e.g. `observation.images.wrist`."""
    return IMAGE_FEATURE_PREFIX + camera
