# A transactional producer initialised before a broker restart commits new
# transactions after it: are their records visible to read_committed?
# With --offsets each transaction also sends input offsets
# (consume-transform-produce, as the router does).
import os, sys, time, uuid, subprocess
from confluent_kafka import Producer, Consumer, TopicPartition, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
BS = os.environ.get("BS", "127.0.0.1:19093")
topic = "a" + uuid.uuid4().hex[:8]
ADM = AdminClient({"bootstrap.servers": BS}); ADM.create_topics([NewTopic(topic, 1, 1)])[topic].result()
time.sleep(0.5)
src = topic + "-in"; ADM.create_topics([NewTopic(src, 1, 1)])[src].result(); time.sleep(0.5)
pp = Producer({"bootstrap.servers": BS})
for i in range(10): pp.produce(src, value=b"in%d" % i, partition=0)
pp.flush(10)
grp = "g" + topic
cons = Consumer({"bootstrap.servers": BS, "group.id": grp, "enable.auto.commit": False, "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "isolation.level": "read_committed"})
cons.subscribe([src])
got = 0; end = time.time() + 30
while got < 10 and time.time() < end:
    m = cons.poll(0.5)
    if m is not None and not m.error(): got += 1
print("consumed", got, flush=True)
p = Producer({"bootstrap.servers": BS, "transactional.id": "t" + topic})
p.init_transactions(30)
p.begin_transaction(); p.produce(topic, value=b"before", partition=0); p.commit_transaction(30)
print("restarting", flush=True)
subprocess.run(os.environ["RESTART_HOOK"], shell=True)
print("restarted", flush=True)
for i in range(3):
    try:
        p.begin_transaction(); p.produce(topic, value=b"after%d" % i, partition=0); p.flush(10)
        if "--offsets" in sys.argv: p.send_offsets_to_transaction([TopicPartition(src, 0, 3 + i)], cons.consumer_group_metadata(), 30)
        p.commit_transaction(30); print("commit", i, "OK", flush=True)
    except KafkaException as e:
        print("commit", i, "error:", e, flush=True)
        try: p.abort_transaction(30)
        except KafkaException as e2: print("abort error:", e2, flush=True)
q = Producer({"bootstrap.servers": BS}); q.produce(topic, value=b"plain-after", partition=0); q.flush(10)
c = Consumer({"bootstrap.servers": BS, "group.id": "g" + uuid.uuid4().hex[:6], "isolation.level": "read_committed", "enable.auto.commit": False})
c.assign([TopicPartition(topic, 0, 0)])
seen = []; end = time.time() + 5
while time.time() < end:
    m = c.poll(0.2)
    if m is not None and not m.error(): seen.append(m.value().decode())
print("read_committed sees", seen, flush=True)
print("group offset", cons.committed([TopicPartition(src, 0)], 10)[0].offset, flush=True)
