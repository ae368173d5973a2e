# Does nisshi apply TxnOffsetCommit before EndTxn? send_offsets_to_transaction, then abort (or kill).
import os, sys, time, uuid, signal, subprocess
from confluent_kafka import Producer, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
BS = os.environ.get("BS", "127.0.0.1:19092")
mode = sys.argv[1]  # abort | kill
topic = "o" + uuid.uuid4().hex[:8]; group = "g" + uuid.uuid4().hex[:6]
ADM = AdminClient({"bootstrap.servers": BS}); ADM.create_topics([NewTopic(topic, 1, 1)])[topic].result()
time.sleep(0.5)
pp = Producer({"bootstrap.servers": BS})
for i in range(5): pp.produce(topic, value=b"in%d" % i, partition=0)
pp.flush(10)
child = r'''
import sys, time
from confluent_kafka import Producer, Consumer, TopicPartition
BS, topic, group, mode = sys.argv[1:5]
c = Consumer({"bootstrap.servers": BS, "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest"})
c.subscribe([topic])
n = 0; end = time.time() + 20
while n < 5 and time.time() < end:
    m = c.poll(0.5)
    if m is not None and not m.error(): n += 1
p = Producer({"bootstrap.servers": BS, "transactional.id": "t" + group})
p.init_transactions(30); p.begin_transaction()
p.produce(topic + "-out", value=b"x")
p.flush(10)
p.send_offsets_to_transaction([TopicPartition(topic, 0, 5)], c.consumer_group_metadata(), 30)
if mode == "abort": p.abort_transaction(30); print("aborted", flush=True)
else: print("ready", flush=True); time.sleep(600)
'''
a = subprocess.Popen([sys.executable, "-c", child, BS, topic, group, mode], stdout=subprocess.PIPE, text=True)
print("child:", a.stdout.readline().strip())
a.send_signal(signal.SIGKILL); a.wait()
if os.environ.get("RESTART_HOOK"): subprocess.run(os.environ["RESTART_HOOK"], shell=True)
c = Consumer({"bootstrap.servers": BS, "group.id": group, "enable.auto.commit": False})
print(mode, "committed offset after the transaction did not commit:", c.committed([TopicPartition(topic, 0)], 10)[0].offset)
