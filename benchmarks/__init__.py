"""Speed benchmarks: each times the project's path against a reference-style path in one process.

``train_speed``: GPU-resident training (TensorSource + Trainer + FastPath) against a DataLoader of
PIL images with torchvision transforms in fp32, as the original repositories train.
``decode_speed``: JPEG decoding for the large image datasets (PIL in DataLoader workers,
``torchvision.io.decode_jpeg`` in batches on the device, a decoded-once uint8 cache).

``concurrent_runs``: many training runs on one device at once (``dvc queue start --jobs N``), and
the memory of one run per network.
``gpu_check``: the one command for a GPU: the CUDA test suite, the digits pipeline on CUDA and all
of the above, each under a time limit, tables under ``--out``.

Run them from the repository root, e.g. ``python -m benchmarks.train_speed --help``; the measured
tables are collected in ``BENCHMARKS.md``.
"""
