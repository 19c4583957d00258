"""The training subsystem: config, loss, optimizer, placement on devices, checkpoints, the metric writer and the
trainer itself (one trainer for all three architectures).

Kept free of imports, so that reading a checkpoint never imports the trainer."""
