//! The Kafka [`Position`] encoding: a partition → next-offset map.
//!
//! `"0:15,1:3,2:0"` means "partition 0 from offset 15, partition 1 from 3, partition 2 from
//! 0". A partition that is missing (and every partition of the empty [`Position::start`]) is
//! read from its earliest retained offset. Partitions are written in ascending order, so
//! equal maps encode to equal strings.

use std::collections::BTreeMap;

use ports::{LogError, Position};

/// A decoded position: the next offset to read, per partition that has one.
pub(crate) type Offsets = BTreeMap<i32, i64>;

/// Decodes `pos` for a topic of `partitions` partitions.
pub(crate) fn decode(pos: &Position, partitions: i32) -> Result<Offsets, LogError> {
    let invalid = || LogError::InvalidPosition(pos.as_str().to_owned());
    let mut map = Offsets::new();
    if pos.is_start() {
        return Ok(map);
    }
    for part in pos.as_str().split(',') {
        let (p, o) = part.split_once(':').ok_or_else(invalid)?;
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(p) || !all_digits(o) {
            return Err(invalid());
        }
        let p: i32 = p.parse().map_err(|_| invalid())?;
        let o: i64 = o.parse().map_err(|_| invalid())?;
        if p >= partitions || map.insert(p, o).is_some() {
            return Err(invalid());
        }
    }
    Ok(map)
}

/// Encodes `offsets` (the empty map is [`Position::start`]).
pub(crate) fn encode(offsets: &Offsets) -> Position {
    let parts: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect();
    Position::new(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sorts() {
        let m = decode(&Position::new("2:0,0:15,1:3"), 3).unwrap();
        assert_eq!(m, Offsets::from([(0, 15), (1, 3), (2, 0)]));
        assert_eq!(encode(&m), Position::new("0:15,1:3,2:0"));
        assert_eq!(decode(&Position::start(), 3).unwrap(), Offsets::new());
        assert_eq!(encode(&Offsets::new()), Position::start());
    }

    #[test]
    fn rejects_what_this_log_did_not_produce() {
        for bad in [
            "not a position ✗",
            "0:1,",
            "0:",
            ":1",
            "0:-1",
            "-1:0",
            "+1:0",
            "3:0",
            "0:1,0:2",
            "0:99999999999999999999",
            "1-7",
        ] {
            assert!(
                matches!(
                    decode(&Position::new(bad), 3),
                    Err(LogError::InvalidPosition(_))
                ),
                "{bad:?} must be invalid"
            );
        }
    }
}
