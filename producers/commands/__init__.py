"""More `torchfleet` commands, one module each; every module here exposes ``register(app)``.

The CLI discovers them, so adding a command never means editing ``producers/cli.py``.
"""
