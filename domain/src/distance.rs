//! The distance consumer's fold: total rides and distance over `ride.created` records.
//!
//! # Duplicate rule
//!
//! Every record carries its producer's commit-ordered sequence number. Within one *lane* of a
//! log (the whole log for most backends, one partition for Kafka) a producer's records arrive in
//! sequence order, possibly with repeats (double sends, redelivery after a crash) but never with
//! a gap that is later filled. So a record whose sequence is not above the high-water mark of its
//! (producer, lane) has been applied already and is skipped. The rule needs no clock and no log
//! offset, so it holds across log backends, and across a cutover from one log to another (every
//! record of the new log has a higher sequence than every record of the old one).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::{LogRecord, kinds};

/// The folded state of one distance consumer. Saved together with the log position, in one
/// transaction, by the consumer state store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistanceState {
    /// Unique rides counted.
    pub rides: u64,
    /// Sum of their distances, in millimetres.
    pub distance_mm: u64,
    /// Highest sequence applied, per `producer/lane` of the current log.
    pub high_water: BTreeMap<String, u64>,
    /// Per producer, the highest sequence applied on earlier logs (set by
    /// [`DistanceState::start_new_log`]); anything at or below it is a duplicate.
    #[serde(default)]
    pub floors: BTreeMap<String, u64>,
    /// Records skipped as duplicates (for the verdict; not part of the result).
    pub duplicates: u64,
    /// Records that could not be read (bad payload); skipped with a warning.
    pub rejected: u64,
}

/// What [`DistanceState::apply`] did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A new ride was counted.
    Counted,
    /// Already applied (sequence not above the high-water mark): nothing changed.
    Duplicate,
    /// A new record of another kind: only the high-water mark moved.
    Ignored,
    /// A new `ride.created` whose payload is invalid: skipped, and the reason.
    Rejected(String),
}

#[derive(Deserialize)]
struct RideCreated {
    #[allow(dead_code)]
    ride_id: i64,
    distance_mm: u64,
}

impl DistanceState {
    /// Applies one record read from `lane`; see the module docs for the duplicate rule.
    pub fn apply(&mut self, lane: u32, record: &LogRecord) -> Applied {
        let floor = self.floors.get(&record.producer).copied().unwrap_or(0);
        let hw = self
            .high_water
            .entry(format!("{}/{lane}", record.producer))
            .or_insert(0);
        if record.seq <= (*hw).max(floor) {
            self.duplicates += 1;
            return Applied::Duplicate;
        }
        *hw = record.seq;
        if record.kind != kinds::RIDE_CREATED {
            return Applied::Ignored;
        }
        match serde_json::from_value::<RideCreated>(record.payload.clone()) {
            Ok(r) => {
                self.rides += 1;
                self.distance_mm += r.distance_mm;
                Applied::Counted
            }
            Err(e) => {
                self.rejected += 1;
                Applied::Rejected(format!(
                    "ride.created seq {} of {}: {e}",
                    record.seq, record.producer
                ))
            }
        }
    }

    /// Applies a batch of `(lane, record)` in order and returns how many rides it counted.
    pub fn apply_all<'a>(
        &mut self,
        records: impl IntoIterator<Item = (u32, &'a LogRecord)>,
    ) -> u64 {
        let before = self.rides;
        for (lane, r) in records {
            self.apply(lane, r);
        }
        self.rides - before
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

    /// The total distance in metres.
    pub fn distance_m(&self) -> f64 {
        self.distance_mm as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{NewRecord, RIDES_STREAM};
    use proptest::prelude::*;

    fn ride(seq: u64, distance_mm: u64) -> LogRecord {
        NewRecord {
            id: uuid::Uuid::nil(),
            stream: RIDES_STREAM.into(),
            key: format!("ride:{seq}"),
            kind: kinds::RIDE_CREATED.into(),
            payload: serde_json::json!({"ride_id": seq, "user_id": 1, "distance_mm": distance_mm}),
            correlation_id: None,
            causation_id: None,
            recorded_at_ms: 0,
        }
        .sequenced("rides", seq)
    }

    #[test]
    fn consumes_and_skips_a_double_send() {
        let mut s = DistanceState::default();
        assert_eq!(s.apply(0, &ride(1, 2000)), Applied::Counted);
        assert_eq!(s.apply(0, &ride(1, 2000)), Applied::Duplicate);
        assert_eq!(s.apply(0, &ride(2, 3000)), Applied::Counted);
        assert_eq!((s.rides, s.distance_mm, s.duplicates), (2, 5000, 1));
        assert_eq!(s.distance_m(), 5.0);
    }

    #[test]
    fn other_kinds_move_the_high_water_mark_only() {
        let mut s = DistanceState::default();
        let mut r = ride(1, 10);
        r.kind = kinds::RIDE_CHARGED.into();
        assert_eq!(s.apply(0, &r), Applied::Ignored);
        assert_eq!(s.apply(0, &ride(1, 10)), Applied::Duplicate);
        assert_eq!(s.rides, 0);
    }

    #[test]
    fn a_bad_payload_is_rejected_without_panicking() {
        let mut s = DistanceState::default();
        let mut r = ride(1, 10);
        r.payload = serde_json::json!({"distance_mm": "far"});
        assert!(matches!(s.apply(0, &r), Applied::Rejected(_)));
        assert_eq!((s.rides, s.rejected), (0, 1));
    }

    #[test]
    fn lanes_are_independent() {
        let mut s = DistanceState::default();
        assert_eq!(s.apply(1, &ride(5, 1)), Applied::Counted);
        assert_eq!(s.apply(0, &ride(3, 1)), Applied::Counted);
        assert_eq!(s.apply(1, &ride(4, 1)), Applied::Duplicate);
    }

    #[test]
    fn a_new_log_with_other_lanes_still_skips_what_the_old_log_carried() {
        let mut s = DistanceState::default();
        s.apply(0, &ride(1, 10));
        s.apply(0, &ride(2, 10));
        s.start_new_log();
        // The new log has three lanes; seq 2 shows up again on lane 2 (re-sent after a relay
        // crash across the cutover), seq 3 is new.
        assert_eq!(s.apply(2, &ride(2, 10)), Applied::Duplicate);
        assert_eq!(s.apply(1, &ride(3, 10)), Applied::Counted);
        assert_eq!(s.apply(2, &ride(4, 10)), Applied::Counted);
        assert_eq!((s.rides, s.distance_mm), (4, 40));
    }

    #[test]
    fn producers_are_independent() {
        let mut s = DistanceState::default();
        let mut other = ride(1, 7);
        other.producer = "other".into();
        s.apply(0, &ride(5, 1));
        assert_eq!(s.apply(0, &other), Applied::Counted);
    }

    /// One step of a delivery schedule, as a log and a crashing consumer can produce it.
    #[derive(Debug, Clone)]
    enum Step {
        /// Deliver the next `n` new records (a batch).
        Fresh(usize),
        /// A double send: redeliver the last `n` records that were delivered.
        Repeat(usize),
        /// A consumer crash after folding the last batch but before commit: the consumer goes
        /// back to its last committed state and the log redelivers from its checkpoint.
        Crash,
        /// The consumer commits its state and checkpoint.
        Commit,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1usize..6).prop_map(Step::Fresh),
            (1usize..6).prop_map(Step::Repeat),
            Just(Step::Crash),
            Just(Step::Commit),
        ]
    }

    proptest! {
        /// The fold over any interleaving of duplicates, redeliveries and crash points equals
        /// the sum over unique rides (the model: a plain sum over the distinct records).
        #[test]
        fn fold_equals_sum_over_unique_rides(
            distances in prop::collection::vec(0u64..2_000_000, 1..60),
            steps in prop::collection::vec(step(), 0..80),
        ) {
            let records: Vec<LogRecord> =
                distances.iter().enumerate().map(|(i, d)| ride(i as u64 + 1, *d)).collect();
            // The log as delivered so far (with repeats), the consumer's committed state and
            // checkpoint (an index into `delivered`), and its in-memory state.
            let mut delivered: Vec<LogRecord> = Vec::new();
            let mut next_fresh = 0;
            let (mut committed, mut checkpoint) = (DistanceState::default(), 0usize);
            let (mut working, mut read_to) = (DistanceState::default(), 0usize);
            let run = |delivered: &Vec<LogRecord>, working: &mut DistanceState, read_to: &mut usize| {
                working.apply_all(delivered[*read_to..].iter().map(|r| (0, r)));
                *read_to = delivered.len();
            };
            for s in steps {
                match s {
                    Step::Fresh(n) => {
                        let end = (next_fresh + n).min(records.len());
                        delivered.extend_from_slice(&records[next_fresh..end]);
                        next_fresh = end;
                        run(&delivered, &mut working, &mut read_to);
                    }
                    Step::Repeat(n) => {
                        let start = next_fresh.saturating_sub(n);
                        delivered.extend_from_slice(&records[start..next_fresh]);
                        run(&delivered, &mut working, &mut read_to);
                    }
                    Step::Crash => {
                        working = committed.clone();
                        read_to = checkpoint;
                        run(&delivered, &mut working, &mut read_to);
                    }
                    Step::Commit => {
                        committed = working.clone();
                        checkpoint = read_to;
                    }
                }
            }
            // Drain: everything left is delivered, and the consumer catches up.
            delivered.extend_from_slice(&records[next_fresh..]);
            run(&delivered, &mut working, &mut read_to);
            prop_assert_eq!(working.rides, distances.len() as u64);
            prop_assert_eq!(working.distance_mm, distances.iter().sum::<u64>());
        }
    }
}
