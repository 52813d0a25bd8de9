//! Records a log lost: the consumer side of DESIGN invariant 8 ("loss is loud").
//!
//! A producer's sequence is gap-free: every record it stages gets the next number. On a log
//! whose lanes carry every record of a producer (every single-lane log), a record whose
//! sequence jumps over its (producer, lane) mark ([`crate::Seen::New`] with `skipped > 0`)
//! therefore proves that the log lost the records in between. A consumer notes each such
//! [`Gap`] in its checkpoint instead of skipping it silently, goes on with what the log still
//! holds, and keeps reporting the gap until the missing records arrive (re-staged by a
//! repair under their original producer and sequence: [`fill`]) or an operator acknowledges
//! them.
//!
//! A gap can also be *open-ended*: when a log no longer holds the position a consumer read up
//! to (a volatile Redis restarted empty, a log directory restored from an older backup), the
//! records after the consumer's marks are missing up to whatever the producer staged since.
//! The next record of that producer closes it ([`close_open`]): at the record's sequence,
//! the gap is known.

use serde::{Deserialize, Serialize};

use crate::record::{RecordDraft, kinds};
use crate::ride::RideEvent;

/// A range of one producer's sequences that a consumer's log lost, on one lane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The producer whose records are missing.
    pub producer: String,
    /// The lane the consumer read (0 on a single-lane log).
    pub lane: u32,
    /// The first missing sequence.
    pub from_seq: u64,
    /// The last missing sequence; `None` while the gap is open-ended (the log lost everything
    /// after the consumer's position, and no later record of the producer was read yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_seq: Option<u64>,
    /// When it was detected (ms since the Unix epoch).
    pub detected_at_ms: i64,
}

impl Gap {
    /// How many sequences are missing, when known.
    pub fn missing(&self) -> Option<u64> {
        self.to_seq.map(|to| to - self.from_seq + 1)
    }

    /// Whether `seq` of `producer` on `lane` falls in this gap.
    pub fn holds(&self, producer: &str, lane: u32, seq: u64) -> bool {
        self.producer == producer
            && self.lane == lane
            && seq >= self.from_seq
            && self.to_seq.is_none_or(|to| seq <= to)
    }
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_seq {
            Some(to) => write!(
                f,
                "{} lane {} seq {}..={}",
                self.producer, self.lane, self.from_seq, to
            ),
            None => write!(
                f,
                "{} lane {} seq {}.. (open)",
                self.producer, self.lane, self.from_seq
            ),
        }
    }
}

/// Notes the gap `from_seq..=to_seq` (nothing when empty), merged with nothing: gaps of one
/// (producer, lane) never overlap, since each is found above the lane's mark.
pub fn note(
    gaps: &mut Vec<Gap>,
    producer: &str,
    lane: u32,
    from_seq: u64,
    to_seq: u64,
    now_ms: i64,
) {
    if from_seq <= to_seq {
        gaps.push(Gap {
            producer: producer.to_owned(),
            lane,
            from_seq,
            to_seq: Some(to_seq),
            detected_at_ms: now_ms,
        });
    }
}

/// A record that the duplicate rule calls a duplicate (its sequence is at or below the mark)
/// but that falls in a gap is a repaired record: takes it out of the gap (splitting it when
/// it lies inside) and returns `true`, so it is handled as new exactly once.
pub fn fill(gaps: &mut Vec<Gap>, producer: &str, lane: u32, seq: u64) -> bool {
    let Some(i) = gaps.iter().position(|g| g.holds(producer, lane, seq)) else {
        return false;
    };
    let gap = gaps.remove(i);
    if seq > gap.from_seq {
        gaps.insert(
            i,
            Gap {
                to_seq: Some(seq - 1),
                ..gap.clone()
            },
        );
    }
    if gap.to_seq.is_none_or(|to| seq < to) {
        gaps.push(Gap {
            from_seq: seq + 1,
            ..gap
        });
    }
    true
}

/// A new record `seq` of `producer` on `lane` (above the mark) closes that lane's open gap of
/// the producer: the missing records end just before it. A gap that turns out empty (the
/// log had lost nothing of this producer) is dropped. Returns whether there was one (it
/// covers the jump from the mark to `seq`, which is then not a gap of its own).
pub fn close_open(gaps: &mut Vec<Gap>, producer: &str, lane: u32, seq: u64) -> bool {
    let mut found = false;
    gaps.retain_mut(|g| {
        if g.producer != producer || g.lane != lane || g.to_seq.is_some() {
            return true;
        }
        found = true;
        if seq <= g.from_seq {
            return false;
        }
        g.to_seq = Some(seq - 1);
        true
    });
    found
}

/// The lowest sequence of `producer` that a consumer with these marks and gaps may still
/// report missing: its lowest gap of the producer, else the sequence after its lowest lane
/// mark (gaps are only ever found above a mark). The store's `published` index must keep
/// every entry from there on; 1 (everything) when the consumer has no mark of the producer.
pub fn index_needed_from(marks: &crate::Marks, gaps: &[Gap], producer: &str) -> u64 {
    let lowest_gap = gaps
        .iter()
        .filter(|g| g.producer == producer)
        .map(|g| g.from_seq)
        .min();
    let prefix = format!("{producer}/");
    let lowest_mark = marks
        .high_water
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(&prefix)
                .is_some_and(|lane| lane.parse::<u32>().is_ok())
        })
        .map(|(_, hw)| *hw)
        .min()
        .or_else(|| marks.floors.get(producer).copied())
        .unwrap_or(0);
    lowest_gap.map_or(lowest_mark + 1, |g| g.min(lowest_mark + 1))
}

/// What the canonical store still holds of a ride, for [`rebuild`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RideFacts {
    /// The ride's id.
    pub ride_id: i64,
    /// Its user.
    pub user_id: i64,
    /// Its distance (final at creation).
    pub distance_mm: u64,
    /// The processor's charge id, once charged.
    pub charge_id: Option<String>,
}

/// Rebuilds the draft of a lost record of `kind` about a ride from what the canonical store
/// holds of it (`None`: the ride no longer exists), or says why it cannot be rebuilt.
///
/// | kind | rebuilt from | when it cannot be |
/// |---|---|---|
/// | `ride.created` | the ride's user and distance | the ride was deleted since |
/// | `ride.charged` | the ride's charge id | the ride was deleted since |
/// | `receipt.requested` | the ride's user (amount and currency are fixed) | the ride was deleted since |
/// | `ride.declined` | - | never: the processor's message is not kept |
/// | `ride.deleted` | - | never: the deleted ride's distance is gone |
/// | `log.cutover` and any other kind | - | never |
///
/// A rebuilt record has a new record id and no correlation id (neither is kept).
///
/// # Errors
/// Why the record cannot be rebuilt.
pub fn rebuild(kind: &str, ride: Option<&RideFacts>) -> Result<RecordDraft, String> {
    let needs_ride = || {
        ride.ok_or_else(|| {
            format!("{kind}: the ride no longer exists in the store (deleted since)")
        })
    };
    match kind {
        kinds::RIDE_CREATED => {
            let r = needs_ride()?;
            Ok(RecordDraft::from_event(
                &RideEvent::Requested {
                    user_id: r.user_id,
                    distance_mm: r.distance_mm,
                },
                None,
            ))
        }
        kinds::RIDE_CHARGED => {
            let r = needs_ride()?;
            let charge_id = r
                .charge_id
                .clone()
                .ok_or_else(|| format!("{kind}: the ride has no charge in the store"))?;
            Ok(RecordDraft::from_event(
                &RideEvent::Charged { charge_id },
                None,
            ))
        }
        kinds::RECEIPT_REQUESTED => Ok(crate::idempotency::receipt_draft(
            needs_ride()?.user_id,
            None,
        )),
        kinds::RIDE_DECLINED => Err(format!(
            "{kind}: the processor's message is not kept in the store"
        )),
        kinds::RIDE_DELETED => Err(format!(
            "{kind}: the deleted ride (its user and distance) is gone from the store"
        )),
        other => Err(format!("{other}: not rebuildable from the store")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(from: u64, to: u64) -> Gap {
        Gap {
            producer: "p".into(),
            lane: 0,
            from_seq: from,
            to_seq: Some(to),
            detected_at_ms: 7,
        }
    }

    #[test]
    fn a_filled_sequence_leaves_the_gap_once() {
        let mut gaps = Vec::new();
        note(&mut gaps, "p", 0, 3, 6, 7);
        note(&mut gaps, "p", 0, 9, 8, 7);
        assert_eq!(gaps, vec![closed(3, 6)]);
        assert!(fill(&mut gaps, "p", 0, 4));
        assert!(!fill(&mut gaps, "p", 0, 4), "a second copy is a duplicate");
        assert!(!fill(&mut gaps, "q", 0, 5), "other producers are not in it");
        assert_eq!(gaps, vec![closed(3, 3), closed(5, 6)]);
        for s in [3, 5, 6] {
            assert!(fill(&mut gaps, "p", 0, s));
        }
        assert!(gaps.is_empty());
    }

    #[test]
    fn rides_rebuild_their_records_and_the_rest_is_refused() {
        let ride = RideFacts {
            ride_id: 42,
            user_id: 7,
            distance_mm: 1234,
            charge_id: Some("ch_1".into()),
        };
        let created = rebuild(kinds::RIDE_CREATED, Some(&ride))
            .unwrap()
            .build(42, 0);
        assert_eq!(
            created.payload,
            serde_json::json!({"ride_id": 42, "user_id": 7, "distance_mm": 1234})
        );
        assert_eq!(
            (created.kind.as_str(), created.key.as_str()),
            ("ride.created", "ride:42")
        );
        let charged = rebuild(kinds::RIDE_CHARGED, Some(&ride))
            .unwrap()
            .build(42, 0);
        assert_eq!(
            charged.payload,
            serde_json::json!({"ride_id": 42, "charge_id": "ch_1"})
        );
        let receipt = rebuild(kinds::RECEIPT_REQUESTED, Some(&ride))
            .unwrap()
            .build(42, 0);
        assert_eq!(receipt.payload["user_id"], 7);
        assert!(rebuild(kinds::RIDE_CREATED, None).is_err());
        assert!(rebuild(kinds::RIDE_DECLINED, Some(&ride)).is_err());
        assert!(rebuild(kinds::RIDE_DELETED, Some(&ride)).is_err());
        assert!(rebuild(kinds::LOG_CUTOVER, None).is_err());
    }

    #[test]
    fn the_index_is_needed_from_the_lowest_gap_or_mark() {
        let mut marks = crate::Marks::default();
        assert_eq!(index_needed_from(&marks, &[], "p"), 1);
        marks.high_water.insert("p/0".into(), 40);
        marks.high_water.insert("p/1".into(), 30);
        marks.high_water.insert("q/0".into(), 5);
        assert_eq!(index_needed_from(&marks, &[], "p"), 31);
        assert_eq!(index_needed_from(&marks, &[closed(3, 6)], "p"), 3);
        assert_eq!(index_needed_from(&marks, &[closed(3, 6)], "q"), 6);
        assert_eq!(index_needed_from(&marks, &[], "r"), 1);
    }

    #[test]
    fn an_open_gap_closes_at_the_next_record_or_vanishes() {
        let open = Gap {
            to_seq: None,
            ..closed(11, 0)
        };
        let mut gaps = vec![open.clone()];
        assert!(!close_open(&mut gaps, "q", 0, 21));
        assert!(close_open(&mut gaps, "p", 0, 21));
        assert_eq!(gaps, vec![closed(11, 20)]);
        assert_eq!(gaps[0].missing(), Some(10));
        let mut nothing_lost = vec![open];
        close_open(&mut nothing_lost, "p", 0, 11);
        assert!(nothing_lost.is_empty());
    }
}
