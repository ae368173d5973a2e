"""Confluent's own Python client against govbus's registry and broker.

    conformance.py produce <bootstrap> <registry> <topic> <subject> <count>
        Produces <count> bca.residents change envelopes with Confluent's
        AvroSerializer (the schema registered under <subject>, looked up in
        govbus's registry) and prints each as one JSON line.
    conformance.py registry <registry> <subject>
        Calls SchemaRegistryClient's lookup_schema, test_compatibility (with
        the latest schema, and with one that drops a required field) and
        get_latest_version of a subject that does not exist, and prints each
        answer (or the error's http_status and error_code) as a JSON line.
    conformance.py consume <bootstrap> <registry> <topic> <count>
        Reads <count> records from every partition of <topic> with
        Confluent's AvroDeserializer (writer schema by id from govbus's
        registry) and prints each as one JSON line.
"""

import datetime
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def produce(bootstrap, registry, topic, subject, count):
    client = SchemaRegistryClient({"url": registry})
    latest = client.get_latest_version(subject)
    # auto.register: registering the same schema again must answer its id.
    serializer = AvroSerializer(client, latest.schema.schema_str)
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "partitioner": "murmur2_random",
    })
    failures = []

    def report(err, _msg):
        if err is not None:
            failures.append(str(err))

    now = datetime.datetime(2026, 11, 27, 9, 0, tzinfo=datetime.timezone.utc)
    for i in range(count):
        citizen = f"0940{i:08d}"
        dob = datetime.date(1990, 1, 1) + datetime.timedelta(days=i)
        change = {
            "event_id": str(uuid.uuid4()),
            "op": "CREATE",
            "before": None,
            "after": {
                "citizen_id": citizen,
                "full_name": f"Nguyễn Văn Python {i}",
                "date_of_birth": dob,
                "sex": "MALE",
                "ethnicity": "Kinh",
                "permanent_address": {"province_code": "92", "commune_code": "31507", "street": None},
                "updated_at": now,
            },
            "source": {"agency": "bca", "system": "python", "seq": 1},
            "ts_ms": int(now.timestamp() * 1000),
        }
        value = serializer(change, SerializationContext(topic, MessageField.VALUE))
        producer.produce(topic, key=citizen.encode(), value=value, on_delivery=report)
        producer.poll(0)
        out = dict(change)
        out["dob_days"] = (dob - datetime.date(1970, 1, 1)).days
        print(json.dumps(out, default=str, ensure_ascii=False), flush=True)
    left = producer.flush(30)
    if left or failures:
        sys.exit(f"produce failed: {left} undelivered, errors {failures[:3]}")


def consume(bootstrap, registry, topic, count):
    client = SchemaRegistryClient({"url": registry})
    deserializer = AvroDeserializer(client)
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"python-conformance-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    seen = 0
    deadline = time.monotonic() + 60
    while seen < count:
        if time.monotonic() > deadline:
            sys.exit(f"only {seen} of {count} records after 60 s")
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            sys.exit(f"consume error: {msg.error()}")
        raw = msg.value()
        value = deserializer(raw, SerializationContext(topic, MessageField.VALUE))
        print(json.dumps({
            "key": msg.key().decode(),
            "partition": msg.partition(),
            "offset": msg.offset(),
            "schema_id": int.from_bytes(raw[1:5], "big"),
            "value": value,
        }, default=str, ensure_ascii=False), flush=True)
        seen += 1
    consumer.close()


def registry_calls(registry, subject):
    client = SchemaRegistryClient({"url": registry})
    latest = client.get_latest_version(subject)
    found = client.lookup_schema(subject, latest.schema)
    print(json.dumps({"call": "lookup_schema", "id": found.schema_id, "version": found.version,
                      "latest": [latest.schema_id, latest.version]}), flush=True)
    ok = client.test_compatibility(subject, latest.schema)
    print(json.dumps({"call": "test_compatibility", "same": ok}), flush=True)
    # Renaming the record makes every version unreadable by the other.
    doc = json.loads(latest.schema.schema_str)
    doc["name"] = doc["name"] + "Renamed"
    renamed = Schema(json.dumps(doc), "AVRO")
    ok = client.test_compatibility(subject, renamed)
    print(json.dumps({"call": "test_compatibility", "renamed": ok}), flush=True)
    try:
        client.get_latest_version(subject + "-missing")
        print(json.dumps({"call": "get_latest_version", "error": None}), flush=True)
    except SchemaRegistryError as e:
        print(json.dumps({"call": "get_latest_version", "http_status": e.http_status_code,
                          "error_code": e.error_code, "message": e.error_message}), flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "produce":
        produce(args[0], args[1], args[2], args[3], int(args[4]))
    elif cmd == "registry":
        registry_calls(args[0], args[1])
    elif cmd == "consume":
        consume(args[0], args[1], args[2], int(args[3]))
    else:
        sys.exit(f"unknown command {cmd}")
