"""Camera frames in datasets: PNG encoding and decoding, and the eval path's resize.

OpenCV is imported inside each function: only code that touches images pays for it.
"""

from __future__ import annotations

import numpy as np


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))  # OpenCV writes BGR
    if not ok:
        raise ValueError(f"could not PNG-encode an image of shape {image.shape}")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8 RGB. OpenCV releases the GIL, so threads decode in parallel."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not a decodable PNG image")
    return np.ascontiguousarray(img[..., ::-1])


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes to (size, size) exactly as the eval path does (gauntlet.platform.eval.episode.filter_obs:
    OpenCV INTER_AREA), so training images match what policies are sent at evaluation."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    import cv2

    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
