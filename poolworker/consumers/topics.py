"""Create the worker's topics when they are missing (an existing topic is left as it is)."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)


def ensure_topics(admin_options: dict, topics: list[str], *, partitions: int, replication_factor: int) -> None:
    admin = KafkaAdminClient(**admin_options)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic, partitions, replication_factor)])
                log.info("created topic %s (%d partitions)", topic, partitions)
            except TopicAlreadyExistsError:
                pass  # another worker created it first
    finally:
        admin.close()
