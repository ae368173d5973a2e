# A consumer group commits an offset, the broker restarts, and a new member
# of the group subscribes: does it resume from the committed offset?
# (The durable chaos run's router stopped fetching after a broker restart.)
# MODE: plain (commit the offset) or txn (send_offsets_to_transaction).
import os, sys, time, uuid, subprocess
from confluent_kafka import Producer, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
BS = os.environ.get("BS", "127.0.0.1:19093")
mode = sys.argv[1] if len(sys.argv) > 1 else "plain"
topic = "r" + uuid.uuid4().hex[:8]; grp = "g" + topic
ADM = AdminClient({"bootstrap.servers": BS}); ADM.create_topics([NewTopic(topic, 1, 1)])[topic].result()
time.sleep(0.5)
p = Producer({"bootstrap.servers": BS})
for i in range(10): p.produce(topic, value=b"m%d" % i, partition=0)
p.flush(10)
def member():
    conf = {"bootstrap.servers": BS, "group.id": grp, "enable.auto.commit": False, "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "isolation.level": "read_committed"}
    if os.environ.get("DEBUG"): conf["debug"] = os.environ["DEBUG"]
    return Consumer(conf)
def read(c, want, secs):
    got = []; end = time.time() + secs
    while len(got) < want and time.time() < end:
        m = c.poll(0.2)
        if m is not None and not m.error(): got.append(m)
    return got
c = member(); c.subscribe([topic])
got = read(c, 5, 20)
print("first member read", [m.offset() for m in got], "leader epoch", got[-1].leader_epoch() if got else None, flush=True)
if mode == "txn":
    t = Producer({"bootstrap.servers": BS, "transactional.id": "t" + topic}); t.init_transactions(30)
    t.begin_transaction()
    t.send_offsets_to_transaction([TopicPartition(topic, 0, 5)], c.consumer_group_metadata(), 30); t.commit_transaction(30)
else:
    c.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
print("committed", c.committed([TopicPartition(topic, 0)], 10)[0], flush=True)
if os.environ.get("KILLED"):
    # The member dies without leaving the group (as a SIGKILLed agent).
    os.kill(os.getpid(), 9) if os.fork() == 0 else None
    # (the parent keeps the member's socket open until the restart)
else:
    c.close()
subprocess.run(os.environ["RESTART_HOOK"], shell=True); print("restarted", flush=True)
c = member(); c.subscribe([topic])
t0 = time.time(); got = read(c, 5, 30)
print(mode, "second member read", [m.offset() for m in got], "in %.1fs" % (time.time() - t0), flush=True)
