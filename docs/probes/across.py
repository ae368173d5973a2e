# An idempotent producer that stays up across a broker restart: is every
# record it is told was stored afterwards readable? (The durable chaos run
# lost acknowledged changes in the seconds after a restart.)
import os, sys, time, uuid, subprocess
from confluent_kafka import Producer, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
BS = os.environ.get("BS", "127.0.0.1:19093")
N = int(os.environ.get("N", "2000"))
topic = "x" + uuid.uuid4().hex[:8]
ADM = AdminClient({"bootstrap.servers": BS}); ADM.create_topics([NewTopic(topic, 4, 1)])[topic].result()
time.sleep(0.5)
acked, failed = set(), []
def report(err, msg):
    if err is None: acked.add(msg.value().decode())
    else: failed.append(str(err))
p = Producer({"bootstrap.servers": BS, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
def send(lo, hi):
    for i in range(lo, hi):
        p.produce(topic, key=b"k%d" % (i % 97), value=b"%d" % i, on_delivery=report); p.poll(0)
    p.flush(60)
send(0, N)
print("before restart: acked", len(acked), flush=True)
subprocess.run(os.environ["RESTART_HOOK"], shell=True); print("restarted", flush=True)
send(N, 2 * N)
print("after restart: acked", len(acked), "failed", len(failed), failed[:3], flush=True)
c = Consumer({"bootstrap.servers": BS, "group.id": "g" + uuid.uuid4().hex[:6], "enable.auto.commit": False})
c.assign([TopicPartition(topic, q, 0) for q in range(4)])
seen = set(); end = time.time() + 20
while time.time() < end:
    m = c.poll(0.2)
    if m is not None and not m.error(): seen.add(m.value().decode())
after = {str(i) for i in range(N, 2 * N)}
lost = sorted((acked & after) - seen, key=int)
print("acknowledged after the restart but not readable:", len(lost), lost[:10], flush=True)
