"""Operations: the scripts' shared plumbing (cli), Cloud TPU VM launches and the Colab notebook's helpers.

Kept free of imports, so that reading a checkpoint never imports the trainer."""
