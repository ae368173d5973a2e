"""Does nisshi serve a large partition within the fetch wait?

    FW=10 emptyfetch.py BOOTSTRAP OFFSET [OFFSET ...]

Reads partition 0 of gov.bca.residents.v1 (as `govbus up --broker nisshi`
writes it) from each OFFSET for 3 s with `fetch.wait.max.ms` = $FW and
prints how many records arrived. After ≈ 7 minutes of `up` (≈ 19,000
single-record batches per partition), FW=10 read 0 records from offset
16,414 and FW=1000 read 14,865: the memory storage lists every batch of the
partition on each fetch, and a fetch it cannot serve within the wait is
answered with no records and no error (docs/BROKERS.md).
"""
import os
import sys
import time

from confluent_kafka import Consumer, TopicPartition

bootstrap = sys.argv[1]
wait = int(os.environ.get("FW", "10"))
for off in [int(x) for x in sys.argv[2:]]:
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "probe-emptyfetch",
        "enable.auto.commit": False,
        "isolation.level": "read_uncommitted",
        "fetch.wait.max.ms": wait,
    })
    c.assign([TopicPartition("gov.bca.residents.v1", 0, off)])
    n, first, last, start = 0, None, None, time.time()
    while time.time() - start < 3:
        m = c.poll(0.2)
        if m is None or m.error():
            continue
        n += 1
        last = m.offset()
        first = m.offset() if first is None else first
    print(off, "read", n, "first", first, "last", last, flush=True)
    c.close()
