"""Fleets on one host: networks, groups kept at their size, rolling and A/B updates.

fleet/ decides (which member to start, replace or remove next, when a rollout rolls back)
and keeps the host's network plumbing; app/ hands it a Driver that boots and removes
machines through the ordinary machine use cases, so a member is an ordinary machine.
"""
