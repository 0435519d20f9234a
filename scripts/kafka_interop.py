#!/usr/bin/env python3
"""An independent Kafka client for sluice's interop test: confluent-kafka (librdkafka 2.16),
installed by `scripts/kafka.sh pyclient` into .tools/pyclient.

  kafka_interop.py produce BROKERS TOPIC FILE...   file i's lines -> partition i
  kafka_interop.py produce-transactions BROKERS TOPIC N ABORTED FILE...
                                                   as a transactional producer: transaction j
                                                   holds lines [j*N, (j+1)*N) of every file (file
                                                   i -> partition i) and is aborted when j is in
                                                   ABORTED (comma-separated), else committed;
                                                   aborted records are flushed to the broker
                                                   first, so they are in the log. Prints
                                                   "committed C aborted A"
  kafka_interop.py consume BROKERS TOPIC           every record (read_committed) as JSON lines:
                                                   {"value": ..., "key": ..., "headers": {...}}
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def produce(brokers, topic, files):
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    n = 0
    for partition, path in enumerate(files):
        with open(path, "rb") as f:
            for line in f:
                line = line.rstrip(b"\n")
                if not line:
                    continue
                while True:
                    try:
                        p.produce(topic, value=line, partition=partition)
                        break
                    except BufferError:
                        p.poll(0.05)
                n += 1
                p.poll(0)
    left = p.flush(60)
    if left:
        sys.exit(f"{left} records not delivered")
    print(n)


def produce_transactions(brokers, topic, per, aborted, files):
    lines = []
    for path in files:
        with open(path, "rb") as f:
            lines.append([l.rstrip(b"\n") for l in f if l.strip()])
    p = Producer({"bootstrap.servers": brokers, "transactional.id": f"interop-{time.time_ns()}", "linger.ms": 5})
    p.init_transactions(30)
    counts = {"committed": 0, "aborted": 0}
    j = 0
    while any(len(ls) > j * per for ls in lines):
        p.begin_transaction()
        n = 0
        for partition, ls in enumerate(lines):
            for line in ls[j * per:(j + 1) * per]:
                while True:
                    try:
                        p.produce(topic, value=line, partition=partition)
                        break
                    except BufferError:
                        p.poll(0.05)
                n += 1
        if j in aborted:
            # Sent and acknowledged inside the transaction before the abort: in the log.
            if p.flush(60):
                sys.exit("records of a transaction to abort not delivered")
            p.abort_transaction(30)
            counts["aborted"] += n
        else:
            p.commit_transaction(30)
            counts["committed"] += n
        j += 1
    print(f"committed {counts['committed']} aborted {counts['aborted']}")


def consume(brokers, topic):
    c = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"interop-{time.time_ns()}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    meta = c.list_topics(topic, timeout=10)
    partitions = sorted(meta.topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in partitions])
    last = time.time()
    while time.time() - last < 2.0:
        m = c.poll(0.1)
        if m is None:
            continue
        if m.error():
            sys.exit(f"consume error: {m.error()}")
        headers = {k: (v.decode() if v is not None else None) for k, v in (m.headers() or [])}
        key = m.key().decode() if m.key() is not None else None
        print(json.dumps({"value": m.value().decode(), "key": key, "headers": headers}))
        last = time.time()
    c.close()


if __name__ == "__main__":
    command, brokers, topic, *rest = sys.argv[1:]
    if command == "produce":
        produce(brokers, topic, rest)
    elif command == "produce-transactions":
        per, aborted, *files = rest
        produce_transactions(brokers, topic, int(per), {int(a) for a in aborted.split(",") if a}, files)
    elif command == "consume":
        consume(brokers, topic)
    else:
        sys.exit(f"unknown command {command}")
