import os, sys, time, uuid, threading, statistics
from confluent_kafka import Producer, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
BS = os.environ.get("BS", "127.0.0.1:19092")
wait = int(sys.argv[1]); iso = sys.argv[2]; txn = sys.argv[3] == "txn"
topic = "f" + uuid.uuid4().hex[:8]
ADM = AdminClient({"bootstrap.servers": BS}); ADM.create_topics([NewTopic(topic, 1, 1)])[topic].result()
time.sleep(0.5)
c = Consumer({"bootstrap.servers": BS, "group.id": "g" + uuid.uuid4().hex[:6], "isolation.level": iso,
              "fetch.wait.max.ms": wait, "fetch.min.bytes": 1, "enable.auto.commit": False})
c.assign([TopicPartition(topic, 0, 0)])
cfg = {"bootstrap.servers": BS, "linger.ms": 0}
if txn: cfg["transactional.id"] = "t" + uuid.uuid4().hex[:6]
p = Producer(cfg)
if txn: p.init_transactions(30)
sent = {}
def prod():
    for i in range(40):
        time.sleep(0.137)
        if txn: p.begin_transaction()
        p.produce(topic, value=str(i).encode(), partition=0)
        if txn: p.commit_transaction(30)
        else: p.flush(10)
        sent[i] = time.time()   # moment the record is visible (acked / committed)
th = threading.Thread(target=prod); th.start()
lat = []; end = time.time() + 12
while time.time() < end and len(lat) < 40:
    m = c.poll(0.05)
    if m is not None and not m.error():
        i = int(m.value()); now = time.time()
        while i not in sent and time.time() < now + 1: time.sleep(0.001)
        lat.append((now - sent[i]) * 1e3)
th.join()
lat.sort()
print(f"fetch.wait.max.ms={wait} {iso} {'txn' if txn else 'plain'}: n={len(lat)} p50={statistics.median(lat):.1f} max={lat[-1]:.1f} ms")
