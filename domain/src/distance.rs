//! The distance consumer's fold: total rides and distance over `ride.created` records.
//!
//! The fold sees each record once: duplicates (double sends, redelivery after a crash) are
//! removed before it by the consumer runtime's duplicate rule ([`crate::Marks`]).

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
    /// Records that could not be read (bad payload); skipped with a warning.
    #[serde(default)]
    pub rejected: u64,
}

/// What [`DistanceState::apply`] did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A new ride was counted.
    Counted,
    /// A record of another kind: nothing changed.
    Ignored,
    /// A `ride.created` whose payload is invalid: skipped, and the reason.
    Rejected(String),
}

#[derive(Deserialize)]
struct RideCreated {
    #[allow(dead_code)]
    ride_id: i64,
    distance_mm: u64,
}

impl DistanceState {
    /// Applies one record that the duplicate rule let through.
    pub fn apply(&mut self, record: &LogRecord) -> Applied {
        if record.kind == kinds::RIDE_DELETED {
            // A deleted ride leaves the totals (its `ride.created` came first: same key, same
            // lane, lower sequence).
            return match serde_json::from_value::<RideCreated>(record.payload.clone()) {
                Ok(r) => {
                    self.rides = self.rides.saturating_sub(1);
                    self.distance_mm = self.distance_mm.saturating_sub(r.distance_mm);
                    Applied::Counted
                }
                Err(e) => {
                    self.rejected += 1;
                    Applied::Rejected(format!(
                        "ride.deleted seq {} of {}: {e}",
                        record.seq, record.producer
                    ))
                }
            };
        }
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

    /// The total distance in metres.
    pub fn distance_m(&self) -> f64 {
        self.distance_mm as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marks::{Marks, Seen};
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
    fn counts_rides_and_ignores_other_kinds() {
        let mut s = DistanceState::default();
        assert_eq!(s.apply(&ride(1, 2000)), Applied::Counted);
        assert_eq!(s.apply(&ride(2, 3000)), Applied::Counted);
        let mut r = ride(3, 10);
        r.kind = kinds::RIDE_CHARGED.into();
        assert_eq!(s.apply(&r), Applied::Ignored);
        assert_eq!((s.rides, s.distance_mm), (2, 5000));
        assert_eq!(s.distance_m(), 5.0);
    }

    #[test]
    fn a_deleted_ride_leaves_the_totals() {
        let mut s = DistanceState::default();
        s.apply(&ride(1, 2000));
        s.apply(&ride(2, 3000));
        let deleted = NewRecord::ride_deleted(1, 1, 2000, 0).sequenced("rides", 3);
        assert_eq!(s.apply(&deleted), Applied::Counted);
        assert_eq!((s.rides, s.distance_mm), (1, 3000));
    }

    #[test]
    fn a_bad_payload_is_rejected_without_panicking() {
        let mut s = DistanceState::default();
        let mut r = ride(1, 10);
        r.payload = serde_json::json!({"distance_mm": "far"});
        assert!(matches!(s.apply(&r), Applied::Rejected(_)));
        assert_eq!((s.rides, s.rejected), (0, 1));
    }

    /// What the consumer runtime does around the fold: the duplicate rule, then the fold.
    #[derive(Debug, Clone, Default)]
    struct Consumer {
        marks: Marks,
        fold: DistanceState,
    }

    impl Consumer {
        fn apply_all<'a>(&mut self, records: impl IntoIterator<Item = (u32, &'a LogRecord)>) {
            for (lane, r) in records {
                if self.marks.see(lane, r) != Seen::Duplicate {
                    self.fold.apply(r);
                }
            }
        }
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
            let (mut committed, mut checkpoint) = (Consumer::default(), 0usize);
            let (mut working, mut read_to) = (Consumer::default(), 0usize);
            let run = |delivered: &Vec<LogRecord>, working: &mut Consumer, read_to: &mut usize| {
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
            prop_assert_eq!(working.fold.rides, distances.len() as u64);
            prop_assert_eq!(working.fold.distance_mm, distances.iter().sum::<u64>());
        }
    }
}
