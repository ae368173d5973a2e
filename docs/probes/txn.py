import os, sys, time, signal, subprocess, uuid
from confluent_kafka import Producer, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
BS = os.environ.get("BS", "127.0.0.1:19092")
mode = sys.argv[1]
topic = "t" + uuid.uuid4().hex[:8]
tid = "x" + uuid.uuid4().hex[:8]
ADM = AdminClient({"bootstrap.servers": BS}); ADM.create_topics([NewTopic(topic, 1, 1)])[topic].result()
time.sleep(0.5)
child = r'''
import sys, time
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": sys.argv[1], "transactional.id": sys.argv[2], "transaction.timeout.ms": int(sys.argv[4])})
p.init_transactions(30)
if sys.argv[5] == "second":
    # One committed transaction first: the one killed is its session's second.
    p.begin_transaction(); p.produce(sys.argv[3], key=b"k", value=b"A-first", partition=0); p.commit_transaction(30)
p.begin_transaction()
for i in range(10): p.produce(sys.argv[3], key=b"k", value=b"A%d" % i, partition=0)
p.flush(10)
print("ready", flush=True); time.sleep(600)
'''
a = subprocess.Popen([sys.executable, "-c", child, BS, tid, topic, os.environ.get("TTO", "60000"), mode], stdout=subprocess.PIPE, text=True)
assert a.stdout.readline().strip() == "ready"
a.send_signal(signal.SIGKILL); a.wait()
t0 = time.time()
if mode in ("commit", "abort-probe", "second"):
    b = Producer({"bootstrap.servers": BS, "transactional.id": tid})
    b.init_transactions(30); print("B init %.2fs" % (time.time() - t0))
    b.begin_transaction(); b.produce(topic, key=b"k", value=b"B", partition=0); b.flush(10)
    (b.abort_transaction if mode == "abort-probe" else b.commit_transaction)(30)
    if mode == "second":
        from confluent_kafka import KafkaException
        for i in range(2):
            try:
                b.begin_transaction(); b.produce(topic, key=b"k", value=b"B%d" % i, partition=0); b.flush(10); b.commit_transaction(30)
                print("B's transaction", i + 2, "committed", flush=True)
            except KafkaException as e:
                print("B's transaction", i + 2, "failed:", e, flush=True); break
elif mode == "fresh-id":
    b = Producer({"bootstrap.servers": BS, "transactional.id": tid + "-2"})
    b.init_transactions(30); b.begin_transaction(); b.produce(topic, key=b"k", value=b"B", partition=0); b.flush(10); b.commit_transaction(30)
elif mode == "timeout":
    time.sleep(float(os.environ.get("WAIT", "8")))
    b = Producer({"bootstrap.servers": BS}); b.produce(topic, key=b"k", value=b"C", partition=0); b.flush(10)
print("B done %.2fs" % (time.time() - t0))
def sees(isolation, secs):
    c = Consumer({"bootstrap.servers": BS, "group.id": "g" + uuid.uuid4().hex[:6], "isolation.level": isolation, "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    seen = []; end = time.time() + secs
    while time.time() < end:
        m = c.poll(0.2)
        if m is not None and not m.error(): seen.append(m.value().decode())
    return seen
print(mode, "read_committed sees", sees("read_committed", 5))
print(mode, "read_uncommitted sees", sees("read_uncommitted", 3))
