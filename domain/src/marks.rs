//! The duplicate rule every consumer follows, owned by the consumer runtime.
//!
//! Every record carries its producer's commit-ordered sequence number. Within one *lane* of a
//! log (the whole log for most backends, one partition for Kafka) a producer's records arrive in
//! sequence order, possibly with repeats (double sends, redelivery after a crash) but never with
//! a gap that is later filled. So a record whose sequence is not above the high-water mark of its
//! (producer, lane) has been seen already and is skipped. The rule needs no clock and no log
//! offset, so it holds across log backends, and across a cutover from one log to another (every
//! record of the new log has a higher sequence than every record of the old one): on a new log
//! the marks collapse into per-producer floors ([`Marks::start_new_log`]).
//!
//! Because a producer's sequence is gap-free, a record whose sequence is more than one above
//! its (producer, lane) mark is also noticed: [`Seen::New`] carries the size of the jump, for
//! logs whose lanes carry every record of a producer (single-lane logs).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::LogRecord;

/// High-water marks per `producer/lane` of the current log, and per-producer floors left by
/// earlier logs. Saved with the consumer's position, in the same transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    /// Highest sequence seen, per `producer/lane` of the current log.
    #[serde(default)]
    pub high_water: BTreeMap<String, u64>,
    /// Per producer, the highest sequence seen on earlier logs; anything at or below it is a
    /// duplicate.
    #[serde(default)]
    pub floors: BTreeMap<String, u64>,
}

/// What [`Marks::see`] decided about one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before; the mark moved to it. `skipped` is how many sequences of the producer
    /// lie between the previous mark and this record (0 when contiguous, or on the first
    /// record of a producer on a lane with no floor).
    New {
        /// Sequences jumped over.
        skipped: u64,
    },
    /// Already seen: skip it.
    Duplicate,
}

impl Marks {
    fn key(producer: &str, lane: u32) -> String {
        format!("{producer}/{lane}")
    }

    /// The mark a record of `producer` on `lane` is compared with.
    pub fn mark(&self, producer: &str, lane: u32) -> u64 {
        let floor = self.floors.get(producer).copied().unwrap_or(0);
        self.high_water
            .get(&Self::key(producer, lane))
            .copied()
            .unwrap_or(0)
            .max(floor)
    }

    /// Whether `record`, read from `lane`, was seen before (without moving the mark).
    pub fn is_duplicate(&self, lane: u32, record: &LogRecord) -> bool {
        record.seq <= self.mark(&record.producer, lane)
    }

    /// Applies the rule to one record and moves the mark when it is new.
    pub fn see(&mut self, lane: u32, record: &LogRecord) -> Seen {
        let mark = self.mark(&record.producer, lane);
        if record.seq <= mark {
            return Seen::Duplicate;
        }
        let known = mark > 0;
        self.high_water
            .insert(Self::key(&record.producer, lane), record.seq);
        Seen::New {
            skipped: if known { record.seq - mark - 1 } else { 0 },
        }
    }

    /// Moves on to a new log after a cutover: the lanes of the new log are unrelated to the old
    /// ones, so each producer's high-water marks collapse into one floor (their maximum). Every
    /// record at or below the floor was published on the old log, which was read to its end, so
    /// it is a duplicate wherever it shows up again.
    pub fn start_new_log(&mut self) {
        for (key, hw) in std::mem::take(&mut self.high_water) {
            let producer = key
                .rsplit_once('/')
                .map_or(key.as_str(), |(p, _)| p)
                .to_owned();
            let floor = self.floors.entry(producer).or_insert(0);
            *floor = (*floor).max(hw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::NewRecord;

    fn rec(producer: &str, seq: u64) -> LogRecord {
        NewRecord {
            id: uuid::Uuid::nil(),
            stream: "rides".into(),
            key: format!("ride:{seq}"),
            kind: "ride.created".into(),
            payload: serde_json::json!({}),
            correlation_id: None,
            causation_id: None,
            recorded_at_ms: 0,
        }
        .sequenced(producer, seq)
    }

    #[test]
    fn a_repeat_is_a_duplicate_and_a_jump_is_measured() {
        let mut m = Marks::default();
        assert_eq!(m.see(0, &rec("p", 1)), Seen::New { skipped: 0 });
        assert_eq!(m.see(0, &rec("p", 1)), Seen::Duplicate);
        assert_eq!(m.see(0, &rec("p", 2)), Seen::New { skipped: 0 });
        assert_eq!(m.see(0, &rec("p", 6)), Seen::New { skipped: 3 });
        assert!(m.is_duplicate(0, &rec("p", 5)));
        assert!(!m.is_duplicate(0, &rec("p", 7)));
    }

    #[test]
    fn lanes_and_producers_are_independent() {
        let mut m = Marks::default();
        assert_eq!(m.see(1, &rec("p", 5)), Seen::New { skipped: 0 });
        assert_eq!(m.see(0, &rec("p", 3)), Seen::New { skipped: 0 });
        assert_eq!(m.see(1, &rec("p", 4)), Seen::Duplicate);
        assert_eq!(m.see(0, &rec("q", 1)), Seen::New { skipped: 0 });
    }

    #[test]
    fn a_new_log_with_other_lanes_still_skips_what_the_old_log_carried() {
        let mut m = Marks::default();
        m.see(0, &rec("p", 1));
        m.see(0, &rec("p", 2));
        m.start_new_log();
        assert_eq!(m.see(2, &rec("p", 2)), Seen::Duplicate);
        assert_eq!(m.see(1, &rec("p", 3)), Seen::New { skipped: 0 });
        assert_eq!(m.see(2, &rec("p", 4)), Seen::New { skipped: 1 });
    }
}
