"""The pieces of ``benchmarks.train_speed``, one concern per module.

``workload``   what is trained: ResNet-32, CE, CIFAR-100-LT (archive or synthetic), the schedule;
``project``    path (a), the project's device-resident path (TensorSource + Trainer + FastPath);
``reference``  path (b), the reference-style DataLoader loop, and its loader alone;
``timing``     the timing protocol: repeats, warm-up, interleaving, the real end-to-end run;
``report``     the markdown tables (device, torch version, command);
``accuracy``   ``--check-accuracy``: the fast path against the exact path.

``benchmarks.train_speed`` is the command line that puts them together.
"""
