"""I/O tensor names and dtypes shared by the exporter and every runtime backend.

One place, as in NVIDIA's nanosam: an exported graph and the runtime that feeds it
can never disagree on what the tensors are called.
"""

IMAGE = "image"  # [B, 1, T, T] float16, the frame after per-frame normalisation to [0, 1]
RATIO = "ratio"  # [B, n] float32, the expert's phase ratio; all zeros means "unknown"
PROBS = "probs"  # [B, n, T, T] float16, softmax over classes

IMAGE_DTYPE = "float16"
RATIO_DTYPE = "float32"
PROBS_DTYPE = "float16"
