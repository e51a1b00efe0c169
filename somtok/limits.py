"""Limits shared by the CLI and the app, kept in one place so both enforce the same numbers."""

# Largest upload or image file we read, in bytes. CIFAR-sized images are a few kB.
MAX_FILE_BYTES = 20 * 1024 * 1024

# Largest image we decode, in pixels (width * height). Pillow's own bomb guard warns at
# about 89 Mpx; we refuse far earlier because every image is shrunk to a few dozen pixels.
MAX_IMAGE_PIXELS = 16_000_000

# Largest side ratio accepted for a user image when --resize centre-crops it (10,000 x 10
# would crop to 10 x 10 and mean nothing).
MAX_ASPECT_RATIO = 20.0

# Batch sizes for inference on the CPU: big enough to keep both cores busy, small enough
# that a 64 x 64 preset stays under a gigabyte of activations.
ENCODE_BATCH_SIZE = 256
DECODE_BATCH_SIZE = 256

# The app: at most this many samples or frames per request (frames: `somtok interpolate` too).
MAX_SAMPLES = 64
MAX_FRAMES = 64

# Enlargement of pictures for display (the app, `somtok interpolate --scale`): 16 shows a 32 x 32
# image at 512 x 512; a typo of 1000 would ask for gigabytes per frame.
MAX_DISPLAY_SCALE = 16

# The app's request queue: one request runs at a time (it already keeps both cores busy) and at
# most this many wait; beyond that Gradio answers "queue full" at once. 100 people pressing a
# button together fit (tests/test_server_load.py); each waits for those ahead of it.
MAX_QUEUED_REQUESTS = 128
