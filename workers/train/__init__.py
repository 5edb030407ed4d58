"""The pieces of a training run, one concern per module; ``workers.jobs.training`` assembles them.

* ``data``: loaders, batch-size checks, tensor augmentation;
* ``optim``: optimizers and learning-rate schedules by name;
* ``losses``: loss functions by name and the explicit L2 penalty;
* ``init``: weight initialisation by name;
* ``loop``: one training epoch, one evaluation, early stopping, progress;
* ``checkpoint``: optimizer and run state to safetensors tensors plus JSON and back.
"""
