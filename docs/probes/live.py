# A live transactional producer whose broker restarts between send_offsets and commit.
import os, sys, time, uuid, subprocess
from confluent_kafka import Producer, Consumer, TopicPartition, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
BS = os.environ.get("BS", "127.0.0.1:19093")
stage = sys.argv[1]  # before-offsets | before-commit
topic = "o" + uuid.uuid4().hex[:8]; out = topic + "-out"; group = "g" + uuid.uuid4().hex[:6]
ADM = AdminClient({"bootstrap.servers": BS}); fs = ADM.create_topics([NewTopic(topic, 1, 1), NewTopic(out, 1, 1)]); [f.result() for f in fs.values()]
time.sleep(0.5)
pp = Producer({"bootstrap.servers": BS})
for i in range(5): pp.produce(topic, value=b"in%d" % i, partition=0)
pp.flush(10)
c = Consumer({"bootstrap.servers": BS, "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
c.subscribe([topic])
n = 0; end = time.time() + 30
while n < 5 and time.time() < end:
    m = c.poll(0.5)
    if m is not None and not m.error(): n += 1
print("consumed", n)
p = Producer({"bootstrap.servers": BS, "transactional.id": "t" + group})
p.init_transactions(30); p.begin_transaction()
for i in range(10): p.produce(out, value=b"x%d" % i, partition=0)
p.flush(10)
if stage == "before-offsets": subprocess.run(os.environ["RESTART_HOOK"], shell=True); print("restarted")
try:
    p.send_offsets_to_transaction([TopicPartition(topic, 0, 5)], c.consumer_group_metadata(), 30)
    if stage == "before-commit": subprocess.run(os.environ["RESTART_HOOK"], shell=True); print("restarted")
    p.commit_transaction(30); print("commit OK")
except KafkaException as e:
    print("error:", e)
    try: p.abort_transaction(30); print("aborted")
    except KafkaException as e2: print("abort error:", e2)
c2 = Consumer({"bootstrap.servers": BS, "group.id": "r" + group, "isolation.level": "read_committed", "enable.auto.commit": False})
c2.assign([TopicPartition(out, 0, 0)])
seen = []; end = time.time() + 5
while time.time() < end:
    m = c2.poll(0.2)
    if m is not None and not m.error(): seen.append(m.value().decode())
c3 = Consumer({"bootstrap.servers": BS, "group.id": group, "enable.auto.commit": False})
print(stage, "committed offset:", c3.committed([TopicPartition(topic, 0)], 10)[0].offset, "output visible:", len(seen))
