//! Consumer lag is measured off the consumer: `LagWatch` reports, per
//! topic, the records between the consumer's position and the high
//! watermark, from positions handed over by the consuming thread.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use govbus_e2e::{poll_until, unique, Broker};
use govbus_kafka_client::{ensure_topics, LagWatch, TopicSpec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

type Sender = ThreadedProducer<DefaultProducerContext>;
type Reports = Arc<Mutex<Vec<(String, i64)>>>;

/// A topic of one partition holding five records, its producer, and a
/// watch every 200 ms with what it reported.
fn five_records_and_a_watch(
    kafka: &govbus_kafka_client::KafkaConfig,
) -> (String, Sender, LagWatch, Reports) {
    let topic = unique("lag");
    ensure_topics(kafka, &[TopicSpec::compacted(&topic, 1)]).unwrap();
    // Five records, one request each (nisshi's high watermark counts
    // requests' batches, see docs/ARCHITECTURE.md).
    let producer: Sender = kafka.producer().create().unwrap();
    for i in 0..5 {
        send(&producer, &topic, &format!("k{i}"));
    }
    let reported: Reports = Arc::default();
    let r = reported.clone();
    let watch = LagWatch::start(kafka, Duration::from_millis(200), move |t, n| {
        r.lock().unwrap().push((t.to_string(), n));
    })
    .unwrap();
    (topic, producer, watch, reported)
}

fn send(producer: &Sender, topic: &str, key: &str) {
    producer
        .send(BaseRecord::to(topic).key(key).payload("v").partition(0))
        .map_err(|(e, _)| e)
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
}

#[test]
fn lag_is_the_records_between_position_and_high_watermark() {
    let broker = Broker::start();
    let kafka = broker.kafka();
    let (topic, _producer, watch, reported) = five_records_and_a_watch(&kafka);

    // A consumer that has read two of the five: three to go.
    let consumer: BaseConsumer = kafka.consumer(&unique("lag-group")).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut read = 0;
    let mut read_until = |n: usize| {
        poll_until(Duration::from_secs(30), || {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                read += 1;
            }
            (read == n).then_some(())
        })
        .unwrap_or_else(|| panic!("{n} records read"))
    };
    read_until(2);
    watch.update(&consumer);
    let lag = poll_until(Duration::from_secs(30), || {
        reported.lock().unwrap().last().cloned()
    })
    .expect("a report");
    assert_eq!(lag, (topic.clone(), 3));

    // Read the rest: the lag drops to 0.
    read_until(5);
    watch.update(&consumer);
    poll_until(Duration::from_secs(30), || {
        (reported.lock().unwrap().last() == Some(&(topic.clone(), 0))).then_some(())
    })
    .expect("lag 0 once all are read");
}

#[test]
fn a_consumer_that_starts_at_the_end_of_a_quiet_topic_has_no_lag() {
    let broker = Broker::start();
    let kafka = broker.kafka();
    let (topic, producer, watch, reported) = five_records_and_a_watch(&kafka);
    // A restarted consumer, at the offset it stored after the fifth record:
    // nothing arrives, so the client never learns a position.
    let consumer: BaseConsumer = kafka.consumer(&unique("lag-group")).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(5))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    watch.starts_at(&tpl);
    assert!(consumer.poll(Duration::from_millis(500)).is_none());
    watch.update(&consumer);
    let lag = poll_until(Duration::from_secs(30), || {
        reported.lock().unwrap().last().cloned()
    })
    .expect("a report");
    assert_eq!(lag, (topic.clone(), 0), "counted from where it started");

    // A record arrives: one to go, then none once it is read.
    send(&producer, &topic, "k5");
    reported.lock().unwrap().clear();
    poll_until(Duration::from_secs(30), || {
        (reported.lock().unwrap().last() == Some(&(topic.clone(), 1))).then_some(())
    })
    .expect("lag 1 before the new record is read");
    poll_until(Duration::from_secs(30), || {
        consumer.poll(Duration::from_millis(100))
    })
    .expect("the new record")
    .unwrap();
    watch.update(&consumer);
    poll_until(Duration::from_secs(30), || {
        (reported.lock().unwrap().last() == Some(&(topic.clone(), 0))).then_some(())
    })
    .expect("lag 0 once it is read");
}
