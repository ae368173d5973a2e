import os, sys, time, uuid, subprocess
from confluent_kafka import Producer, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
BS = os.environ.get("BS", "127.0.0.1:19093")
cfgs = {"cleanup.policy": "compact"}
if sys.argv[1] == "lag": cfgs["min.compaction.lag.ms"] = "3600000"
topic = "c" + uuid.uuid4().hex[:8]
ADM = AdminClient({"bootstrap.servers": BS}); ADM.create_topics([NewTopic(topic, 1, 1, config=cfgs)])[topic].result()
time.sleep(0.5)
p = Producer({"bootstrap.servers": BS})
for i in range(5): p.produce(topic, key=b"k", value=b"v%d" % i, partition=0); p.flush(10)
subprocess.run(os.environ["RESTART_HOOK"], shell=True)
c = Consumer({"bootstrap.servers": BS, "group.id": "g" + uuid.uuid4().hex[:6], "enable.auto.commit": False})
c.assign([TopicPartition(topic, 0, 0)])
seen = []; end = time.time() + 4
while time.time() < end:
    m = c.poll(0.2)
    if m is not None and not m.error(): seen.append((m.offset(), m.value().decode()))
print(sys.argv[1], seen)
