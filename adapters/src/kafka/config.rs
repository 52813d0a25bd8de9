//! Connection settings: the `kafka://` URL and [`KafkaOptions`].

use std::time::Duration;

use ports::LogError;

/// How to create and talk to the log's topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaOptions {
    /// Partitions of the topic when this log creates it (default 3). An existing topic keeps
    /// its own count, which is read from the broker's metadata on connect.
    pub partitions: i32,
    /// Replication factor when this log creates the topic (default 1).
    pub replication: i32,
    /// The upper bound of one broker round trip: topic creation, metadata, watermarks,
    /// `DeleteRecords` (default 10 s).
    pub timeout: Duration,
    /// How long `append` waits for a record to be acknowledged, retries included, before it
    /// fails with [`LogError::Unavailable`] (`message.timeout.ms`, default 30 s).
    pub delivery_timeout: Duration,
    /// At most this many records per produce batch (`batch.num.messages`; default `None`,
    /// librdkafka's 10 000). `Some(1)` for brokers whose `ListOffsets(latest)` reports the
    /// base offset of the last *batch* + 1 instead of the last record + 1 (tansu 0.6 with
    /// in-memory storage); with such a broker `lag` and `len` undercount and a read could
    /// take "nothing there" for an answer. URL parameter `batch_records=N`.
    pub batch_records: Option<u32>,
    /// Whether `trim` deletes records with `DeleteRecords` (default `true`). `false` for
    /// brokers that cannot (tansu 0.6 with in-memory storage drops the connection): `trim`
    /// then removes nothing and returns 0, and the topic must be bounded with retention.
    /// URL parameter `delete_records=false`.
    pub delete_records: bool,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        Self {
            partitions: 3,
            replication: 1,
            timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(30),
            batch_records: None,
            delete_records: true,
        }
    }
}

/// A parsed `kafka://host:port[,host:port]/topic[?partitions=N&replication=R&batch_records=B&delete_records=false]`
/// URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KafkaUrl {
    pub(crate) brokers: String,
    pub(crate) topic: String,
    pub(crate) options: KafkaOptions,
}

fn bad(url: &str, why: &str) -> LogError {
    LogError::Other(format!(
        "invalid kafka URL {url:?}: {why} (expected kafka://host:port[,host:port]/topic[?partitions=N])"
    ))
}

/// Whether `topic` is a legal Kafka topic name (`[A-Za-z0-9._-]{1,249}`, not `.` or `..`).
pub(crate) fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl KafkaUrl {
    /// Parses `url`.
    pub(crate) fn parse(url: &str) -> Result<Self, LogError> {
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| bad(url, "the scheme must be kafka://"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (brokers, topic) = rest
            .split_once('/')
            .ok_or_else(|| bad(url, "no topic after the brokers"))?;
        if brokers.is_empty()
            || brokers
                .split(',')
                .any(|b| !b.contains(':') || b.ends_with(':'))
        {
            return Err(bad(url, "brokers must be host:port, separated by commas"));
        }
        if !valid_topic(topic) {
            return Err(bad(
                url,
                "the topic must be 1-249 characters of [A-Za-z0-9._-]",
            ));
        }
        let mut options = KafkaOptions::default();
        for pair in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let n = || -> Result<i32, LogError> {
                v.parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad(url, &format!("{k} must be a positive integer")))
            };
            match k {
                "partitions" => options.partitions = n()?,
                "replication" => options.replication = n()?,
                "batch_records" => options.batch_records = Some(n()?.unsigned_abs()),
                "delete_records" => {
                    options.delete_records = v
                        .parse()
                        .map_err(|_| bad(url, "delete_records must be true or false"))?;
                }
                _ => return Err(bad(url, &format!("unknown parameter {k:?}"))),
            }
        }
        Ok(Self {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_brokers_topic_and_partitions() {
        let u = KafkaUrl::parse("kafka://a:9092,b:9093/rides?partitions=6").unwrap();
        assert_eq!(u.brokers, "a:9092,b:9093");
        assert_eq!(u.topic, "rides");
        assert_eq!(u.options.partitions, 6);
        assert_eq!(u.options.replication, 1);
        let t = KafkaUrl::parse("kafka://a:1/t?batch_records=1&delete_records=false").unwrap();
        assert_eq!(t.options.batch_records, Some(1));
        assert!(!t.options.delete_records);
        let d = KafkaUrl::parse("kafka://127.0.0.1:9092/rides.log").unwrap();
        assert_eq!(d.options, KafkaOptions::default());
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "redis://a:1/t",
            "kafka://a:1",
            "kafka://a:1/",
            "kafka:///t",
            "kafka://a/t",
            "kafka://a:1/t?partitions=0",
            "kafka://a:1/t?partitions=x",
            "kafka://a:1/t?color=red",
            "kafka://a:1/t?delete_records=maybe",
            "kafka://a:1/t?batch_records=0",
            "kafka://a:1/bad topic",
        ] {
            assert!(
                matches!(KafkaUrl::parse(url), Err(LogError::Other(_))),
                "{url} must be rejected"
            );
        }
    }
}
