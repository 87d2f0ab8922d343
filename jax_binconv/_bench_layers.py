"""The layer shapes of ../shared/BENCH.md, written once for the demo and the
benchmark scripts: id -> (H, W, C, O, kernel size, stride); NHWC input,
SAME padding."""

LAYERS = {
    "L1": (56, 56, 64, 64, 3, 1),
    "L2": (28, 28, 128, 128, 3, 1),
    "L3": (14, 14, 256, 256, 3, 1),
    "L4": (7, 7, 512, 512, 3, 1),
    "L5": (56, 56, 64, 128, 3, 2),
    "L6": (28, 28, 256, 256, 1, 1),
    "L7": (56, 56, 256, 256, 3, 1),
}
