"""Deployment helpers: the compose preflight check and the worker container healthcheck."""
