"""The `s3` config section: the S3 client settings every stage hands to etc_core.storage.uri."""
from __future__ import annotations

import os

from pydantic import Field, field_validator

from etc_core.section import Section
from etc_core.storage.uri import S3Access


class S3Config(Section):
    """S3 client settings; credentials come only from the environment / boto3 chain, never from here."""

    endpoint_url: str | None = Field(None, validate_default=True)  # None: $AWS_ENDPOINT_URL, else real AWS
    region: str | None = None  # None: $AWS_DEFAULT_REGION / boto3's default

    @field_validator("endpoint_url")
    @classmethod
    def _resolve_endpoint(cls, value: str | None) -> str | None:
        # read once where the config is loaded (the driver), then carried by the config to every Ray worker, so
        # boto3 and pyarrow (which ignores $AWS_ENDPOINT_URL) meet the same endpoint on every node
        return value or os.environ.get("AWS_ENDPOINT_URL") or None

    @property
    def access(self) -> S3Access:
        """The S3 access every stage hands to shards, locks, checkpoints and Ray storage (etc_core.storage.uri)."""
        return S3Access(self.endpoint_url, self.region)
