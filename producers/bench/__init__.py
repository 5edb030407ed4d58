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
* ``fleet_cold``: a freshly launched worker process, from launch to its first answer;
* ``lane_batched`` / ``lane_unbatched``: single-input requests through the online lane
  (``Client.infer``) on the batching worker, and on the one that reads one at a time;
* ``lane_drain``: N requests added while the worker's lane consumer is paused, then the
  worker alone empties the lane (its inputs/s against ``floor_beside_drain``, the batch-32
  floor measured right before and after it).

The queue-borne rows carry the CPU time per request of the producers (this process), the
worker and Redis, read from ``/proc`` (``*_cpu_us`` in ``extra``): on a shared host they
move far less than the wall-clock figures.

With ``--spawn`` the command starts its own embedded Redis and worker processes (one at a
time, so each arm knows which worker answers); without it, it drives the running fleet and
measures the arms that need no worker of its own (floor, celery_noop, naive, fleet_batched,
lane_batched).
The floor imports torch, so run bench where the ``worker`` extra is installed.
"""
