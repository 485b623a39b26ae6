"""One account-region's share of a DynamoDB store table: the same items, under a key prefix.

The same certificate id can exist in several accounts and regions, and a task list, a
suppression or an account audit configuration belongs to one account-region, so a table that
serves many of them keeps each one apart. :class:`PartitionedClient` sits between
:class:`~devicedefender_audit.store.dynamodb.DynamoStore` and its DynamoDB client and prefixes the
partition keys (``PK``, and the index key ``GSI1PK``) with ``<account>/<region>|`` on the way
in, and strips the prefix on the way out. The store's own key layout and code stay as they are:
every item of a partition is the item an unpartitioned store would write, with the prefix; and
an unpartitioned key starts with an upper-case kind (``INV#``, ``TASK#``, ...), never a digit, so
no partitioned key can meet an unpartitioned one.

Keys are rewritten wherever DynamoDB takes or returns them: ``Key``, ``Item``, batch requests and
their unprocessed remainders, ``ExclusiveStartKey``/``LastEvaluatedKey``, returned items and
attributes, and the expression values that a ``KeyConditionExpression`` compares a partition key
with or an ``UpdateExpression`` assigns to one. A key condition on a partition key that is not a
plain ``= :value`` is refused rather than run unprefixed over the whole table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

#: The attributes that hold partition keys (the table's and its index's).
PARTITION_KEYS = ("PK", "GSI1PK")
_ASSIGNED = re.compile(r"(#?[A-Za-z0-9_]+)\s*=\s*(:[A-Za-z0-9_]+)")
_MENTIONED = re.compile(r"#?[A-Za-z0-9_]+")


class PartitionedClient:
    """A DynamoDB client whose items all live under one partition prefix (see the module doc).

    Calls the store does not make through a rewritten method (``describe_table``,
    ``create_table``, ``get_waiter``, ...) go to the client unchanged: they concern the table.
    """

    def __init__(self, client: Any, partition: str) -> None:
        self._client = client
        self.prefix = f"{partition}|"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    # keys and items ------------------------------------------------------------------------------

    def _in(self, item: Mapping[str, dict]) -> dict[str, dict]:
        return {name: ({"S": self.prefix + value["S"]} if name in PARTITION_KEYS else value)
                for name, value in item.items()}

    def _out(self, item: Mapping[str, dict]) -> dict[str, dict]:
        return {name: ({"S": value["S"].removeprefix(self.prefix)} if name in PARTITION_KEYS else value)
                for name, value in item.items()}

    def _key_values(self, expression: str, names: Mapping[str, str], values: Mapping[str, dict],
                    refuse_other: bool) -> dict[str, dict]:
        """``values`` with the placeholders that ``expression`` compares or assigns to a
        partition key prefixed."""
        keyed = {value for name, value in _ASSIGNED.findall(expression) if names.get(name, name) in PARTITION_KEYS}
        if refuse_other:
            mentioned = {names.get(m, m) for m in _MENTIONED.findall(expression)} & set(PARTITION_KEYS)
            if mentioned and not keyed:
                raise ValueError(f"a partitioned store queries partition keys by equality only: {expression!r}")
        return {name: ({"S": self.prefix + value["S"]} if name in keyed else value) for name, value in values.items()}

    @staticmethod
    def _map_key(response: dict, name: str, rewrite: Callable[[Mapping[str, dict]], dict[str, dict]]) -> None:
        if name in response:
            response[name] = rewrite(response[name])

    # the calls that carry keys -------------------------------------------------------------------

    def get_item(self, **params: Any) -> dict:
        response = self._client.get_item(**{**params, "Key": self._in(params["Key"])})
        self._map_key(response, "Item", self._out)
        return response

    def put_item(self, **params: Any) -> dict:
        response = self._client.put_item(**{**params, "Item": self._in(params["Item"])})
        self._map_key(response, "Attributes", self._out)
        return response

    def delete_item(self, **params: Any) -> dict:
        response = self._client.delete_item(**{**params, "Key": self._in(params["Key"])})
        self._map_key(response, "Attributes", self._out)
        return response

    def update_item(self, **params: Any) -> dict:
        request = {**params, "Key": self._in(params["Key"])}
        if "ExpressionAttributeValues" in params:
            request["ExpressionAttributeValues"] = self._key_values(
                params.get("UpdateExpression", ""), params.get("ExpressionAttributeNames", {}),
                params["ExpressionAttributeValues"], refuse_other=False)
        response = self._client.update_item(**request)
        self._map_key(response, "Attributes", self._out)
        return response

    def query(self, **params: Any) -> dict:
        request = dict(params)
        request["ExpressionAttributeValues"] = self._key_values(
            params["KeyConditionExpression"], params.get("ExpressionAttributeNames", {}),
            params.get("ExpressionAttributeValues", {}), refuse_other=True)
        if "ExclusiveStartKey" in params:
            request["ExclusiveStartKey"] = self._in(params["ExclusiveStartKey"])
        response = self._client.query(**request)
        response["Items"] = [self._out(item) for item in response.get("Items", [])]
        self._map_key(response, "LastEvaluatedKey", self._out)
        return response

    def batch_get_item(self, **params: Any) -> dict:
        def keys(spec: Mapping[str, Any], rewrite: Callable[[Mapping[str, dict]], dict[str, dict]]) -> dict:
            return {**spec, "Keys": [rewrite(key) for key in spec["Keys"]]}

        request = {table: keys(spec, self._in) for table, spec in params["RequestItems"].items()}
        response = self._client.batch_get_item(**{**params, "RequestItems": request})
        response["Responses"] = {table: [self._out(item) for item in items]
                                 for table, items in response.get("Responses", {}).items()}
        if response.get("UnprocessedKeys"):
            response["UnprocessedKeys"] = {table: keys(spec, self._out)
                                           for table, spec in response["UnprocessedKeys"].items()}
        return response

    def batch_write_item(self, **params: Any) -> dict:
        def writes(requests: list[dict], rewrite: Callable[[Mapping[str, dict]], dict[str, dict]]) -> list[dict]:
            out = []
            for write in requests:
                if "PutRequest" in write:
                    out.append({"PutRequest": {"Item": rewrite(write["PutRequest"]["Item"])}})
                else:
                    out.append({"DeleteRequest": {"Key": rewrite(write["DeleteRequest"]["Key"])}})
            return out

        request = {table: writes(requests, self._in) for table, requests in params["RequestItems"].items()}
        response = self._client.batch_write_item(**{**params, "RequestItems": request})
        if response.get("UnprocessedItems"):
            response["UnprocessedItems"] = {table: writes(requests, self._out)
                                            for table, requests in response["UnprocessedItems"].items()}
        return response
