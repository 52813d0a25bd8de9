//! [`KafkaLog`]: the [`Log`] port on one Kafka topic.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use domain::LogRecord;
use futures::future::join_all;
use ports::{Batch, Delivery, Log, LogError, Position};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::time::Instant;

use super::config::{KafkaOptions, KafkaUrl, valid_topic};
use super::error::{join_error, log_error};
use super::position::{Offsets, decode, encode};

/// The consumer group id that librdkafka wants configured. Reads use manual `assign` and
/// never join the group nor commit, so every reader can share it.
const GROUP_ID: &str = "rides-kafka-log-reader";
/// At most this many idle consumers are kept for later reads.
const POOL_MAX: usize = 4;
/// After the first record of a read, the read keeps taking records while the next one
/// arrives within this gap (records of other partitions come in their own fetch responses).
const DRAIN_GAP: Duration = Duration::from_millis(5);
/// The upper bound of [`Log::ping`].
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between metadata lookups while a just-created topic propagates (connect only).
const METADATA_RETRY: Duration = Duration::from_millis(50);

/// The settings every client of this log shares.
fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("broker.address.family", "v4");
    c
}

/// A consumer that only ever reads assigned partitions from explicit offsets.
fn consumer_config(brokers: &str) -> ClientConfig {
    let mut c = client_config(brokers);
    c.set("group.id", GROUP_ID)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A position below the low watermark (trimmed meanwhile) resumes at the earliest
        // retained record, which is where that reader would be had it kept up.
        .set("auto.offset.reset", "earliest")
        // No transactions are ever written, so there is nothing to hide; this keeps the
        // readable end equal to the high watermark that `lag` and `len` count with.
        .set("isolation.level", "read_uncommitted")
        // The broker answers an empty fetch after at most this long: bounds how late a
        // waiting read sees a record on a broker that does not end long polls early.
        .set("fetch.wait.max.ms", "100");
    c
}

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// The log on one Kafka topic. See the [module docs](super) for the guarantees.
pub struct KafkaLog {
    brokers: String,
    topic: String,
    partitions: i32,
    options: KafkaOptions,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// For blocking metadata and watermark queries (run on the blocking pool).
    meta: Arc<BaseConsumer>,
    /// Idle readers; each read takes one (or makes one), assigns it, and puts it back.
    pool: Mutex<Vec<StreamConsumer>>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl KafkaLog {
    /// Connects to `kafka://host:port[,host:port]/topic[?partitions=N&replication=R]`,
    /// creating the topic when it does not exist (default 3 partitions, replication 1).
    /// `batch_records=N` and `delete_records=false` set the [`KafkaOptions`] fields of the
    /// same names (both needed with tansu 0.6).
    ///
    /// # Errors
    /// [`LogError::Other`] for a malformed URL or a topic the broker refuses to create;
    /// [`LogError::Unavailable`] when the brokers cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, LogError> {
        let url = KafkaUrl::parse(url)?;
        Self::connect_with(&url.brokers, &url.topic, url.options).await
    }

    /// Connects to `brokers` (`host:port[,host:port]`) and the log's `topic`, creating it
    /// with `options` when it does not exist. Topics are always created explicitly through
    /// the admin API; broker-side auto-creation is never relied on.
    ///
    /// # Errors
    /// As [`KafkaLog::connect`].
    pub async fn connect_with(
        brokers: &str,
        topic: &str,
        options: KafkaOptions,
    ) -> Result<Self, LogError> {
        if !valid_topic(topic) {
            return Err(LogError::Other(format!(
                "invalid kafka topic {topic:?}: use 1-249 characters of [A-Za-z0-9._-]"
            )));
        }
        if options.partitions < 1 || options.replication < 1 {
            return Err(LogError::Other(
                "kafka: partitions and replication must be at least 1".into(),
            ));
        }
        let mut producer = client_config(brokers);
        producer
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", millis(options.delivery_timeout))
            .set("linger.ms", "2");
        if let Some(n) = options.batch_records {
            producer.set("batch.num.messages", n.max(1).to_string());
        }
        let producer: FutureProducer = producer.create().map_err(log_error)?;
        let admin: AdminClient<DefaultClientContext> =
            client_config(brokers).create().map_err(log_error)?;
        let meta: BaseConsumer = consumer_config(brokers).create().map_err(log_error)?;
        let meta = Arc::new(meta);

        create_topic(&admin, topic, &options).await?;
        let partitions = partition_count(Arc::clone(&meta), topic, options.timeout).await?;
        Ok(Self {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            partitions,
            options,
            producer,
            admin,
            meta,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The topic this log lives in.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic's partition count (the lanes), read from the broker on connect.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// The partition of lane `lane`.
    fn lane_partition(&self, lane: u32) -> Result<i32, LogError> {
        i32::try_from(lane)
            .ok()
            .filter(|p| *p < self.partitions)
            .ok_or_else(|| ports::log::no_such_lane(&self.describe(), lane, self.lanes()))
    }

    /// The offsets of a lane position: partition `p` only.
    fn lane_offsets(&self, pos: &Position, p: i32) -> Result<Offsets, LogError> {
        let offsets = decode(pos, self.partitions)?;
        if offsets.keys().any(|k| *k != p) {
            return Err(LogError::InvalidPosition(pos.as_str().to_owned()));
        }
        Ok(offsets)
    }

    /// [`Log::read`] of partition `only` (from a lane position), or of every partition.
    async fn read_partitions(
        &self,
        from: &Position,
        max: usize,
        wait: Duration,
        only: Option<i32>,
    ) -> Result<Batch, LogError> {
        let start = match only {
            Some(p) => self.lane_offsets(from, p)?,
            None => decode(from, self.partitions)?,
        };
        let empty = || Batch {
            deliveries: Vec::new(),
            next: from.clone(),
        };
        if max == 0 {
            return Ok(empty());
        }
        let mut assignment = TopicPartitionList::with_capacity(self.partitions as usize);
        for p in (0..self.partitions).filter(|p| only.is_none_or(|o| o == *p)) {
            let offset = start
                .get(&p)
                .map_or(Offset::Beginning, |o| Offset::Offset(*o));
            assignment
                .add_partition_offset(&self.topic, p, offset)
                .map_err(log_error)?;
        }
        let consumer = self.take_consumer()?;
        consumer.assign(&assignment).map_err(log_error)?;
        // On an error the consumer is dropped rather than pooled: its state is unknown.
        let read = self
            .read_assigned(&consumer, &start, max, wait, only)
            .await?;
        if consumer.unassign().is_ok() {
            self.give_back(consumer);
        }
        Ok(match read {
            Some((deliveries, next)) if !deliveries.is_empty() => Batch {
                deliveries,
                next: encode(&next),
            },
            _ => empty(),
        })
    }

    /// `(low, high)` watermarks of every partition, in partition order.
    async fn watermarks(&self) -> Result<Vec<(i64, i64)>, LogError> {
        let meta = Arc::clone(&self.meta);
        let topic = self.topic.clone();
        let (n, timeout) = (self.partitions, self.options.timeout);
        tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|p| meta.fetch_watermarks(&topic, p, timeout))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(join_error)?
        .map_err(log_error)
    }

    /// Records after `from` (see [`Log::lag`]), on partition `only` or on all of them.
    async fn lag_of(&self, from: &Offsets, only: Option<i32>) -> Result<u64, LogError> {
        let marks = self.watermarks().await?;
        Ok((0i32..)
            .zip(marks)
            .filter(|(p, _)| only.is_none_or(|o| o == *p))
            .map(|(p, (low, high))| {
                let next = from.get(&p).copied().unwrap_or(low).max(low);
                u64::try_from(high - next).unwrap_or(0)
            })
            .sum())
    }

    fn take_consumer(&self) -> Result<StreamConsumer, LogError> {
        let idle = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(c) => Ok(c),
            None => consumer_config(&self.brokers).create().map_err(log_error),
        }
    }

    fn give_back(&self, consumer: StreamConsumer) {
        let extra = {
            let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
            if pool.len() < POOL_MAX {
                pool.push(consumer);
                None
            } else {
                Some(consumer)
            }
        };
        drop(extra);
    }

    /// Waits until `until` for the next record after `next` on the assigned partitions, and
    /// moves `next` past it. Messages below `next` (left over from an earlier assignment of
    /// a pooled consumer) are skipped.
    async fn next_record(
        &self,
        consumer: &StreamConsumer,
        until: Instant,
        next: &mut Offsets,
    ) -> Result<Option<Delivery>, LogError> {
        loop {
            let msg = match tokio::time::timeout_at(until, consumer.recv()).await {
                Err(_) => return Ok(None),
                Ok(Err(KafkaError::PartitionEOF(_))) => continue,
                Ok(Err(e)) => return Err(log_error(e)),
                Ok(Ok(msg)) => msg,
            };
            let (p, offset) = (msg.partition(), msg.offset());
            if msg.topic() != self.topic || next.get(&p).is_some_and(|n| offset < *n) {
                continue;
            }
            let lane = u32::try_from(p).map_err(|_| {
                LogError::Other(format!("kafka: negative partition {p} from the broker"))
            })?;
            let record = LogRecord::from_json(msg.payload().unwrap_or_default()).map_err(|e| {
                LogError::Other(format!(
                    "kafka: {}/{p}@{offset} does not hold a log record: {e}",
                    self.topic
                ))
            })?;
            next.insert(p, offset + 1);
            return Ok(Some(Delivery { lane, record }));
        }
    }

    /// The body of [`Log::read`] on a consumer already assigned at `start` (to partition
    /// `only`, or to every partition).
    async fn read_assigned(
        &self,
        consumer: &StreamConsumer,
        start: &Offsets,
        max: usize,
        wait: Duration,
        only: Option<i32>,
    ) -> Result<Option<(Vec<Delivery>, Offsets)>, LogError> {
        let mut next = start.clone();
        let mut first = self
            .next_record(consumer, Instant::now() + wait, &mut next)
            .await?;
        if first.is_none() {
            // Nothing arrived within `wait`: either there is nothing to read, or the
            // consumer was still connecting/fetching. The watermarks tell which; in the
            // second case the records are there and the read waits for them (bounded),
            // so that an empty batch always means "nothing after `from`".
            let lag = self.lag_of(start, only).await?;
            if lag == 0 {
                return Ok(None);
            }
            first = self
                .next_record(consumer, Instant::now() + self.options.timeout, &mut next)
                .await?;
            if first.is_none() {
                return Err(LogError::Unavailable(format!(
                    "kafka: {lag} records wait in {} but none arrived within {:?}",
                    self.topic, self.options.timeout
                )));
            }
        }
        let mut deliveries: Vec<Delivery> = first.into_iter().collect();
        while deliveries.len() < max {
            match self
                .next_record(consumer, Instant::now() + DRAIN_GAP, &mut next)
                .await?
            {
                Some(d) => deliveries.push(d),
                None => break,
            }
        }
        Ok(Some((deliveries, next)))
    }
}

/// Creates `topic` unless it exists.
async fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    options: &KafkaOptions,
) -> Result<(), LogError> {
    let new = NewTopic::new(
        topic,
        options.partitions,
        TopicReplication::Fixed(options.replication),
    );
    let opts = AdminOptions::new()
        .request_timeout(Some(options.timeout))
        .operation_timeout(Some(options.timeout));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(log_error)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(match log_error(KafkaError::AdminOp(code)) {
                    LogError::Unavailable(m) => {
                        LogError::Unavailable(format!("creating topic {name}: {m}"))
                    }
                    other => LogError::Other(format!("creating topic {name}: {other}")),
                });
            }
        }
    }
    Ok(())
}

/// The partition count of `topic`, retried until a just-created topic shows up in the
/// metadata (or `timeout` passes).
async fn partition_count(
    meta: Arc<BaseConsumer>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, LogError> {
    let deadline = Instant::now() + timeout;
    loop {
        let (m, t) = (Arc::clone(&meta), topic.to_owned());
        let found = tokio::task::spawn_blocking(move || {
            let md = m.fetch_metadata(Some(&t), timeout)?;
            Ok::<_, KafkaError>(
                md.topics()
                    .iter()
                    .find(|x| x.name() == t && x.error().is_none())
                    .map(|x| x.partitions().len()),
            )
        })
        .await
        .map_err(join_error)?
        .map_err(log_error)?;
        match found {
            Some(n) if n > 0 => {
                return i32::try_from(n)
                    .map_err(|_| LogError::Other(format!("kafka: {n} partitions in {topic}")));
            }
            _ if Instant::now() >= deadline => {
                return Err(LogError::Unavailable(format!(
                    "kafka: topic {topic} did not appear in the metadata within {timeout:?}"
                )));
            }
            _ => tokio::time::sleep(METADATA_RETRY).await,
        }
    }
}

/// Waits for every delivery; the first failure (after all have settled) is the result.
async fn settle(pending: Vec<DeliveryFuture>) -> Result<(), LogError> {
    let mut first_error = None;
    for outcome in join_all(pending).await {
        let err = match outcome {
            Ok(Ok(_)) => continue,
            Ok(Err((e, _))) => log_error(e),
            Err(_) => LogError::Unavailable("kafka: the producer was dropped".into()),
        };
        first_error.get_or_insert(err);
    }
    first_error.map_or(Ok(()), Err)
}

#[async_trait]
impl Log for KafkaLog {
    fn describe(&self) -> String {
        format!("kafka://{}/{}", self.brokers, self.topic)
    }

    async fn ping(&self) -> Result<(), LogError> {
        let meta = Arc::clone(&self.meta);
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || meta.fetch_metadata(Some(&topic), PING_TIMEOUT))
            .await
            .map_err(join_error)?
            .map(drop)
            .map_err(|e| LogError::Unavailable(format!("kafka: {e}")))
    }

    async fn append(&self, records: &[LogRecord]) -> Result<(), LogError> {
        let payloads: Vec<Vec<u8>> = records.iter().map(LogRecord::to_json).collect();
        let mut pending = Vec::with_capacity(records.len());
        // Enqueue in slice order (the producer keeps per-partition order from here on, with
        // idempotence even across retries), then wait for every acknowledgement at once.
        for (r, payload) in records.iter().zip(&payloads) {
            let mut rec = FutureRecord::to(&self.topic)
                .key(r.key.as_str())
                .payload(payload.as_slice());
            loop {
                match self.producer.send_result(rec) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: let what this call queued drain first (or,
                        // when it is other callers' records, give them a moment).
                        rec = back;
                        if pending.is_empty() {
                            tokio::time::sleep(DRAIN_GAP).await;
                        } else {
                            settle(std::mem::take(&mut pending)).await?;
                        }
                    }
                    Err((e, _)) => {
                        // Records queued before this one may still be delivered: a failed
                        // append may have appended a prefix, as the port allows.
                        return Err(log_error(e));
                    }
                }
            }
        }
        settle(pending).await
    }

    async fn read(&self, from: &Position, max: usize, wait: Duration) -> Result<Batch, LogError> {
        self.read_partitions(from, max, wait, None).await
    }

    async fn lag(&self, from: &Position) -> Result<u64, LogError> {
        let from = decode(from, self.partitions)?;
        self.lag_of(&from, None).await
    }

    fn lanes(&self) -> u32 {
        u32::try_from(self.partitions).unwrap_or(1)
    }

    /// A saved offset above its partition's high watermark: the topic was deleted and
    /// recreated (its offsets start again at 0) since the position was read. One watermark
    /// request per partition, asked only after a read found nothing.
    async fn beyond_end(&self, from: &Position) -> Result<bool, LogError> {
        let from = decode(from, self.partitions)?;
        if from.is_empty() {
            return Ok(false);
        }
        let marks = self.watermarks().await?;
        Ok((0i32..)
            .zip(marks)
            .any(|(p, (_, high))| from.get(&p).is_some_and(|next| *next > high)))
    }

    async fn read_lane(
        &self,
        lane: u32,
        from: &Position,
        max: usize,
        wait: Duration,
    ) -> Result<Batch, LogError> {
        let p = self.lane_partition(lane)?;
        self.read_partitions(from, max, wait, Some(p)).await
    }

    async fn lag_lane(&self, lane: u32, from: &Position) -> Result<u64, LogError> {
        let p = self.lane_partition(lane)?;
        let from = self.lane_offsets(from, p)?;
        self.lag_of(&from, Some(p)).await
    }

    fn merge_lanes(&self, lanes: &[Position]) -> Result<Position, LogError> {
        if lanes.len() != self.lanes() as usize {
            return Err(LogError::Other(format!(
                "kafka: {} lane positions for the {} partitions of {}",
                lanes.len(),
                self.partitions,
                self.topic
            )));
        }
        let mut all = Offsets::new();
        for (p, pos) in (0i32..).zip(lanes) {
            all.extend(self.lane_offsets(pos, p)?);
        }
        Ok(encode(&all))
    }

    async fn trim(&self, checkpoints: &[Position]) -> Result<u64, LogError> {
        let decoded = checkpoints
            .iter()
            .map(|cp| decode(cp, self.partitions))
            .collect::<Result<Vec<_>, _>>()?;
        if !self.options.delete_records
            || decoded.is_empty()
            || checkpoints.iter().any(Position::is_start)
        {
            return Ok(0);
        }
        let before = self.watermarks().await?;
        let mut deletions = TopicPartitionList::new();
        for (p, (low, high)) in (0i32..).zip(&before) {
            // A checkpoint without this partition has read nothing of it yet.
            let passed = decoded.iter().map(|cp| cp.get(&p).copied()).min().flatten();
            if let Some(upto) = passed.map(|o| o.min(*high)).filter(|o| o > low) {
                deletions
                    .add_partition_offset(&self.topic, p, Offset::Offset(upto))
                    .map_err(log_error)?;
            }
        }
        if deletions.count() == 0 {
            return Ok(0);
        }
        let refused = |e: KafkaError| match log_error(e) {
            LogError::Unavailable(m) => LogError::Unavailable(m),
            other => LogError::Other(format!(
                "the broker refused DeleteRecords on {} ({other}); this log cannot be \
                 trimmed there: bound the topic with retention (retention.ms / \
                 retention.bytes) instead",
                self.topic
            )),
        };
        let opts = AdminOptions::new()
            .request_timeout(Some(self.options.timeout))
            .operation_timeout(Some(self.options.timeout));
        let result = self
            .admin
            .delete_records(&deletions, &opts)
            .await
            .map_err(refused)?;
        for elem in result.elements() {
            elem.error().map_err(refused)?;
        }
        let after = self.watermarks().await?;
        Ok(before
            .iter()
            .zip(&after)
            .map(|((low, _), (new_low, _))| u64::try_from(new_low - low).unwrap_or(0))
            .sum())
    }

    async fn len(&self) -> Result<u64, LogError> {
        Ok(self
            .watermarks()
            .await?
            .into_iter()
            .map(|(low, high)| u64::try_from(high - low).unwrap_or(0))
            .sum())
    }
}
