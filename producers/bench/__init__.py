"""`torchfleet bench`, torch-free: the fleet's inference path beside the physical limit and the
naive task.

Arms, for each model, with the same input and the same torch thread count everywhere:

* ``floor``: the model called in-process through the worker's own fast paths (the limit),
  at batch 1 and at the micro-batch size;
* ``celery_noop``: a no-op task round trip on the same Redis (the queue's own cost), at
  one producer right before each model's fleet arms (``beside`` names the model), and at
  the other producer counts once;
* ``naive``: a Celery task that loads the model from the store on every request;
* ``fleet_batched`` / ``fleet_unbatched``: the real path, warm, micro-batching on / off;
* ``fleet_cold``: a freshly launched worker process, from launch to its first answer.

With ``--spawn`` the command starts its own embedded Redis and worker processes (one at a
time, so each arm knows which worker answers); without it, it drives the running fleet and
measures the arms that need no worker of its own (floor, celery_noop, naive, fleet_batched).
The floor imports torch, so run bench where the ``worker`` extra is installed.
"""
