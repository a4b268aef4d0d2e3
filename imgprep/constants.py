"""Named constants of the AlexNet recipe and of the stored images, in one place.

The file names and version of the on-disk format belong to `imgprep.dataset`.
"""

# Section 2 of Krizhevsky et al. (2012): images are rescaled so the shorter side is 256 and the
# central 256x256 patch is kept.
STORED_SIZE = 256
# Section 4.1: training uses random 224x224 patches of the stored 256x256 image.
CROP_SIZE = 224
# Section 4.1: PCA lighting coefficients a_i ~ N(0, 0.1).
PCA_LIGHTING_STD = 0.1

# Re-encoding quality of the stored JPEGs: high enough that the stored pixels are within a few
# levels of the decoded-and-resized source, small enough for ~50 KB per sample at 256x256.
JPEG_QUALITY = 95
# Samples per shard: ~50 MB tars at 256px / q95, 1282 shards for ImageNet's training split,
# and one unit of work per shard of a couple of seconds on one core.
SHARD_SIZE = 1000

SPLITS = ("train", "val")

# Largest image accepted, in pixels, checked from the header before decoding: Pillow's warning
# threshold (about 8.9k x 8.9k); ImageNet's largest images are far below it. It bounds the memory
# one image takes in a worker (figures in the README).
MAX_PIXELS = 89_478_485
# Pillow refuses to open anything over twice its warning threshold, whatever we allow.
MAX_PIXELS_CEILING = 2 * MAX_PIXELS
# Largest stored side: a stored image stays within MAX_PIXELS, and a manifest claiming more is refused.
MAX_STORED_SIZE = 9459  # floor(sqrt(MAX_PIXELS))
# Label of a padding sample (and of one left out as changed since prepare): the loss and the metrics skip it.
PAD_LABEL = -1
