"""Typed keys for what the web application holds."""

from __future__ import annotations

import asyncpg
import redis.asyncio as redis
from aiohttp import web
from aiokafka import AIOKafkaProducer

from app.settings import Settings
from schemas.targets import Target
from web.admission import Admission
from web.idempotency import IdempotencyStore
from web.submission import SubmissionContext

settings_key = web.AppKey("settings", Settings)
admission_key = web.AppKey("admission", Admission)
pool_key = web.AppKey("pool", asyncpg.Pool)
redis_key = web.AppKey("redis", redis.Redis)
producer_key = web.AppKey("producer", AIOKafkaProducer)
targets_key = web.AppKey("targets", dict[str, Target])
idempotency_key = web.AppKey("idempotency", IdempotencyStore)
submission_key = web.AppKey("submission", SubmissionContext)
