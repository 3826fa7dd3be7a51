"""aiokafka's rebalance callbacks handed to the stage that owns the partitions (the join stage or the
repartition stage), which must finish its work on a revoked partition before the group moves it."""

from __future__ import annotations

from typing import Protocol

from aiokafka import TopicPartition
from aiokafka.abc import ConsumerRebalanceListener


class PartitionOwner(Protocol):
    async def on_revoked(self, revoked: set[TopicPartition]) -> None: ...

    async def on_assigned(self, assigned: set[TopicPartition]) -> None: ...


class Listener(ConsumerRebalanceListener):
    def __init__(self, owner: PartitionOwner) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.owner.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.owner.on_assigned(assigned)
