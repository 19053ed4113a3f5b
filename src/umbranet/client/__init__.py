"""Clients of the controller's REST API: the typed client (`controller.py`), its result types
(`models.py`), enrollment over a pinned connection, join keys, management calls, and the
follower that keeps an identity renewed and the epoch stream followed (`follow.py`).

Used by the SDK, the router, the agent and the CLI; the controller itself never imports it.
"""
