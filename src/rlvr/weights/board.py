"""The weight board: published weight payloads as a chain a rollout worker at any version can follow.

The learner posts each publication (:class:`rlvr.weights.sync.WeightPublisher`); a worker asks what
takes it from its version to the newest (``since``) and applies that (:class:`rlvr.weights.sync.WeightReceiver`).
On Ray the items are object refs (:mod:`rlvr.experience.ray_workers`).
"""

from __future__ import annotations

import threading


class WeightBoard:
    """Published weight payloads (or Ray object refs to them) as a chain from the newest anchor.

    ``post(version, base_version, item, anchor)``: ``item`` takes a worker from ``base_version``
    to ``version`` (``base_version`` None: self-contained); ``anchor``, when given, is a
    self-contained item for ``version``. ``since(v)``: what a worker at ``v`` applies, in order.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.anchor: tuple[int, object] | None = None
        self.chain: list[tuple[int, int | None, object]] = []  # patches after the anchor

    def post(self, version: int, base_version: int | None, item, anchor=None) -> None:
        with self.lock:
            if base_version is None or anchor is not None:
                self.anchor = (version, item if base_version is None else anchor)
                self.chain = []
            else:
                self.chain.append((version, base_version, item))

    def since(self, version: int | None) -> list:
        with self.lock:
            if self.anchor is None:
                return []
            latest = self.chain[-1][0] if self.chain else self.anchor[0]
            if version == latest:
                return []
            for i, (_, base, _) in enumerate(self.chain):
                if base == version:
                    return [item for _, _, item in self.chain[i:]]
            return [self.anchor[1]] + [item for _, _, item in self.chain]

    @property
    def version(self) -> int | None:
        with self.lock:
            if self.anchor is None:
                return None
            return self.chain[-1][0] if self.chain else self.anchor[0]
