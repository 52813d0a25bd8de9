//! Ride parameters, distance, and the ride aggregate.
//!
//! The aggregate follows the decide/evolve split: [`Ride::decide`] holds every rule and returns
//! events, [`Ride::evolve`] only folds an event into state. Both are synchronous and pure.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Mean Earth radius in metres (IUGG), used by the great-circle distance.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// The four coordinates of a ride request, validated.
///
/// Stored parameters are the parsed floats, so `"0"` and `"0.0"` compare equal (reference 2.3).
///
/// A value can only be built through validation: [`RideRequest::parse`], [`RideParams::new`],
/// or deserialization, which runs the same checks (a stored `{"origin_lat": 91, …}` is an
/// error, never a ride). Serialized as JSON, every coordinate round-trips to the same `f64`
/// bit for bit (serde_json's `float_roundtrip` parser, the shortest round-trip formatter),
/// so a retry with the same text always equals the stored parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawRideParams")]
pub struct RideParams {
    origin_lat: f64,
    origin_lon: f64,
    target_lat: f64,
    target_lon: f64,
}

/// The unvalidated shape of [`RideParams`] when deserialized.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRideParams {
    origin_lat: f64,
    origin_lon: f64,
    target_lat: f64,
    target_lon: f64,
}

impl TryFrom<RawRideParams> for RideParams {
    type Error = ParamError;

    fn try_from(r: RawRideParams) -> Result<Self, ParamError> {
        Self::new(r.origin_lat, r.origin_lon, r.target_lat, r.target_lon)
    }
}

/// Why request parameters were refused. `Display` is the exact user-facing message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParamError {
    /// Missing or empty.
    #[error("Please specify parameter '{0}'.")]
    Missing(&'static str),
    /// Not a finite floating-point number.
    #[error("Parameter '{0}' must be a floating-point number.")]
    NotAFloat(&'static str),
    /// Latitude outside [-90, 90].
    #[error("Parameter '{0}' must be a valid latitude coordinate.")]
    Latitude(&'static str),
    /// Longitude outside [-180, 180].
    #[error("Parameter '{0}' must be a valid longitude coordinate.")]
    Longitude(&'static str),
    /// `raise_error` was neither `true` nor `false`.
    #[error("Parameter '{0}' must be a boolean.")]
    NotABoolean(&'static str),
}

/// A parsed `POST /rides` body: the coordinates plus the optional `raise_error` test switch,
/// which is deliberately *not* part of the stored parameters (so a retry without it succeeds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RideRequest {
    /// The validated coordinates.
    pub params: RideParams,
    /// `raise_error=true` makes the charge phase fail with an internal error (reference 2.5).
    pub raise_error: bool,
}

const COORDS: [(&str, bool); 4] = [
    ("origin_lat", true),
    ("origin_lon", false),
    ("target_lat", true),
    ("target_lon", false),
];

/// Parses a float the way the reference's strict `Float()` does for the inputs users send:
/// surrounding whitespace is allowed, `inf`/`NaN` are not numbers, and an underscore is
/// allowed only between two digits (`4_5` is 45; `_4_5_`, `4__5`, `4_` and `1_e_1` are not
/// numbers).
fn parse_float(raw: &str) -> Option<f64> {
    let text = raw.trim();
    let bytes = text.as_bytes();
    let digit_at = |i: Option<usize>| i.and_then(|i| bytes.get(i)).is_some_and(u8::is_ascii_digit);
    let underscores_ok = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'_')
        .all(|(i, _)| digit_at(i.checked_sub(1)) && digit_at(Some(i + 1)));
    if !underscores_ok {
        return None;
    }
    let v: f64 = text.replace('_', "").parse().ok()?;
    v.is_finite().then_some(v)
}

impl RideRequest {
    /// Validates a request body given a lookup of raw string values, in the reference's order:
    /// `origin_lat`, `origin_lon`, `target_lat`, `target_lon`, then `raise_error`. The first
    /// failure wins.
    ///
    /// # Errors
    /// Returns the [`ParamError`] whose message the API sends with status 422.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Self, ParamError> {
        let mut values = [0.0_f64; 4];
        for (slot, (name, is_lat)) in values.iter_mut().zip(COORDS) {
            let raw = get(name)
                .filter(|s| !s.is_empty())
                .ok_or(ParamError::Missing(name))?;
            let v = parse_float(&raw).ok_or(ParamError::NotAFloat(name))?;
            *slot = check_range(name, is_lat, v)?;
        }
        let raise_error = match get("raise_error") {
            None => false,
            Some(s) if s.is_empty() => return Err(ParamError::Missing("raise_error")),
            Some(s) if s == "true" => true,
            Some(s) if s == "false" => false,
            Some(_) => return Err(ParamError::NotABoolean("raise_error")),
        };
        let [origin_lat, origin_lon, target_lat, target_lon] = values;
        Ok(Self {
            params: RideParams {
                origin_lat,
                origin_lon,
                target_lat,
                target_lon,
            },
            raise_error,
        })
    }
}

/// The range rule of one coordinate (finite, latitude in [-90, 90], longitude in [-180, 180]).
fn check_range(name: &'static str, is_lat: bool, v: f64) -> Result<f64, ParamError> {
    if !v.is_finite() {
        return Err(ParamError::NotAFloat(name));
    }
    if is_lat && !(-90.0..=90.0).contains(&v) {
        return Err(ParamError::Latitude(name));
    }
    if !is_lat && !(-180.0..=180.0).contains(&v) {
        return Err(ParamError::Longitude(name));
    }
    Ok(v)
}

impl RideParams {
    /// Builds parameters from already-valid coordinates.
    ///
    /// # Errors
    /// Returns a [`ParamError`] when a coordinate is out of range or not finite.
    pub fn new(
        origin_lat: f64,
        origin_lon: f64,
        target_lat: f64,
        target_lon: f64,
    ) -> Result<Self, ParamError> {
        let [a, b, c, d] = COORDS;
        Ok(Self {
            origin_lat: check_range(a.0, a.1, origin_lat)?,
            origin_lon: check_range(b.0, b.1, origin_lon)?,
            target_lat: check_range(c.0, c.1, target_lat)?,
            target_lon: check_range(d.0, d.1, target_lon)?,
        })
    }

    /// Origin latitude in degrees.
    pub fn origin_lat(&self) -> f64 {
        self.origin_lat
    }
    /// Origin longitude in degrees.
    pub fn origin_lon(&self) -> f64 {
        self.origin_lon
    }
    /// Target latitude in degrees.
    pub fn target_lat(&self) -> f64 {
        self.target_lat
    }
    /// Target longitude in degrees.
    pub fn target_lon(&self) -> f64 {
        self.target_lon
    }

    /// Great-circle (haversine) distance between origin and target, in whole millimetres.
    ///
    /// Distances are integers everywhere so that every consumer's total equals the store's sum
    /// exactly, whatever the order of addition.
    pub fn distance_mm(&self) -> u64 {
        let (p1, p2) = (self.origin_lat.to_radians(), self.target_lat.to_radians());
        let dp = p2 - p1;
        let dl = (self.target_lon - self.origin_lon).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        let c = 2.0 * a.sqrt().min(1.0).asin();
        (EARTH_RADIUS_M * c * 1000.0).round() as u64
    }

    /// The parameters as the JSON object stored on the idempotency key.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "origin_lat": self.origin_lat,
            "origin_lon": self.origin_lon,
            "target_lat": self.target_lat,
            "target_lon": self.target_lon,
        })
    }
}

/// What can be asked of a ride.
#[derive(Debug, Clone, PartialEq)]
pub enum RideCommand {
    /// Create the ride for a user.
    Request {
        /// The requesting user.
        user_id: i64,
        /// Validated coordinates.
        params: RideParams,
    },
    /// The payment processor accepted the charge.
    RecordCharge {
        /// The processor's charge id.
        charge_id: String,
    },
    /// The payment processor refused the charge permanently.
    RecordDecline {
        /// The processor's message.
        message: String,
    },
}

/// What happened to a ride. Each event becomes one log record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum RideEvent {
    /// The ride exists; its distance is final.
    #[serde(rename = "ride.created")]
    Requested {
        /// The requesting user.
        user_id: i64,
        /// Great-circle distance in millimetres.
        distance_mm: u64,
    },
    /// The ride was paid.
    #[serde(rename = "ride.charged")]
    Charged {
        /// The processor's charge id.
        charge_id: String,
    },
    /// The ride's payment was declined.
    #[serde(rename = "ride.declined")]
    Declined {
        /// The processor's message.
        message: String,
    },
}

impl RideEvent {
    /// The record kind this event is published as.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Requested { .. } => crate::record::kinds::RIDE_CREATED,
            Self::Charged { .. } => crate::record::kinds::RIDE_CHARGED,
            Self::Declined { .. } => crate::record::kinds::RIDE_DECLINED,
        }
    }
}

/// Where a ride is in its life.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum RideStatus {
    /// Not requested yet.
    #[default]
    None,
    /// Requested, not paid.
    Requested,
    /// Paid.
    Charged(String),
    /// Payment refused for good.
    Declined,
}

/// The ride aggregate: state folded from its events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ride {
    status: RideStatus,
    user_id: i64,
    distance_mm: u64,
}

/// A command that the ride's current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RideError {
    /// The ride was already requested.
    #[error("ride already exists")]
    AlreadyRequested,
    /// The ride does not exist yet.
    #[error("ride does not exist")]
    NotRequested,
    /// The ride was already settled with another outcome.
    #[error("ride payment already settled")]
    AlreadySettled,
}

impl Ride {
    /// Folds a history into state.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a RideEvent>) -> Self {
        let mut ride = Self::default();
        for e in events {
            ride.evolve(e);
        }
        ride
    }

    /// Current status.
    pub fn status(&self) -> &RideStatus {
        &self.status
    }
    /// Distance in millimetres (0 before the ride is requested).
    pub fn distance_mm(&self) -> u64 {
        self.distance_mm
    }
    /// The requesting user (0 before the ride is requested).
    pub fn user_id(&self) -> i64 {
        self.user_id
    }

    /// Every rule of the aggregate. Recording the same charge twice is a no-op (no events), so
    /// a retried phase never publishes a second `ride.charged`.
    ///
    /// # Errors
    /// Returns a [`RideError`] when the command does not fit the current state.
    pub fn decide(&self, cmd: &RideCommand) -> Result<Vec<RideEvent>, RideError> {
        match (cmd, &self.status) {
            (RideCommand::Request { user_id, params }, RideStatus::None) => {
                Ok(vec![RideEvent::Requested {
                    user_id: *user_id,
                    distance_mm: params.distance_mm(),
                }])
            }
            (RideCommand::Request { .. }, _) => Err(RideError::AlreadyRequested),
            (_, RideStatus::None) => Err(RideError::NotRequested),
            (RideCommand::RecordCharge { charge_id }, RideStatus::Requested) => {
                Ok(vec![RideEvent::Charged {
                    charge_id: charge_id.clone(),
                }])
            }
            (RideCommand::RecordCharge { charge_id }, RideStatus::Charged(c)) if c == charge_id => {
                Ok(vec![])
            }
            (RideCommand::RecordDecline { message }, RideStatus::Requested) => {
                Ok(vec![RideEvent::Declined {
                    message: message.clone(),
                }])
            }
            (RideCommand::RecordDecline { .. }, RideStatus::Declined) => Ok(vec![]),
            _ => Err(RideError::AlreadySettled),
        }
    }

    /// Applies one event; never fails.
    pub fn evolve(&mut self, event: &RideEvent) {
        match event {
            RideEvent::Requested {
                user_id,
                distance_mm,
            } => {
                self.status = RideStatus::Requested;
                self.user_id = *user_id;
                self.distance_mm = *distance_mm;
            }
            RideEvent::Charged { charge_id } => {
                self.status = RideStatus::Charged(charge_id.clone())
            }
            RideEvent::Declined { .. } => self.status = RideStatus::Declined,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(pairs: &[(&str, &str)]) -> Result<RideRequest, ParamError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        RideRequest::parse(|k| m.get(k).cloned())
    }

    const VALID: [(&str, &str); 4] = [
        ("origin_lat", "0.0"),
        ("origin_lon", "0.0"),
        ("target_lat", "0.0"),
        ("target_lon", "0.0"),
    ];

    #[test]
    fn validation_messages_follow_reference_order() {
        assert_eq!(
            parse(&[]).unwrap_err().to_string(),
            "Please specify parameter 'origin_lat'."
        );
        assert_eq!(
            parse(&[("origin_lat", "foo")]).unwrap_err().to_string(),
            "Parameter 'origin_lat' must be a floating-point number."
        );
        assert_eq!(
            parse(&[("origin_lat", "91")]).unwrap_err().to_string(),
            "Parameter 'origin_lat' must be a valid latitude coordinate."
        );
        assert_eq!(
            parse(&[("origin_lat", "1"), ("origin_lon", "-180.5")])
                .unwrap_err()
                .to_string(),
            "Parameter 'origin_lon' must be a valid longitude coordinate."
        );
        assert_eq!(
            parse(&[("origin_lat", "1"), ("origin_lon", "2"), ("target_lat", "")])
                .unwrap_err()
                .to_string(),
            "Please specify parameter 'target_lat'."
        );
        let mut with = VALID.to_vec();
        with.push(("raise_error", "yes"));
        assert_eq!(
            parse(&with).unwrap_err().to_string(),
            "Parameter 'raise_error' must be a boolean."
        );
        with.pop();
        with.push(("raise_error", ""));
        assert_eq!(
            parse(&with).unwrap_err().to_string(),
            "Please specify parameter 'raise_error'."
        );
    }

    #[test]
    fn underscores_only_between_digits_as_in_ruby_float() {
        let with = |v: &'static str| {
            let mut p = VALID.to_vec();
            p[0] = ("origin_lat", v);
            parse(&p)
        };
        for good in ["4_5", "1_0.2_5", "-4_5", " 4_5 ", "1e0_1"] {
            assert!(with(good).is_ok(), "{good}");
        }
        assert_eq!(with("4_5").unwrap().params.origin_lat(), 45.0);
        for bad in ["_4_5_", "4__5", "4_", "_4", "1_e_1", "1._5", "1_.5", "-_4"] {
            assert_eq!(with(bad), Err(ParamError::NotAFloat("origin_lat")), "{bad}");
        }
    }

    #[test]
    fn non_finite_numbers_are_not_floats() {
        for bad in ["NaN", "inf", "-infinity", "1.0.0"] {
            let mut p = VALID.to_vec();
            p[0] = ("origin_lat", bad);
            assert_eq!(parse(&p), Err(ParamError::NotAFloat("origin_lat")), "{bad}");
        }
    }

    #[test]
    fn equal_floats_written_differently_are_equal_params() {
        let a = parse(&VALID).unwrap();
        let b = parse(&[
            ("origin_lat", "0"),
            ("origin_lon", " 0 "),
            ("target_lat", "0e0"),
            ("target_lon", "-0"),
        ])
        .unwrap();
        assert_eq!(a.params, b.params);
        assert!(!a.raise_error);
    }

    #[test]
    fn distance_is_great_circle() {
        // One degree of latitude is about 111.2 km.
        let p = RideParams::new(0.0, 0.0, 1.0, 0.0).unwrap();
        let m = p.distance_mm() as f64 / 1000.0;
        assert!((m - 111_195.0).abs() < 10.0, "{m}");
        assert_eq!(
            RideParams::new(10.0, 10.0, 10.0, 10.0)
                .unwrap()
                .distance_mm(),
            0
        );
        // Antipodes: half the circumference.
        let far = RideParams::new(0.0, 0.0, 0.0, 180.0).unwrap().distance_mm() as f64 / 1000.0;
        assert!((far - std::f64::consts::PI * EARTH_RADIUS_M).abs() < 1.0);
    }

    // given / when / then for the aggregate.
    fn given(events: &[RideEvent]) -> Ride {
        Ride::from_events(events)
    }

    #[test]
    fn request_creates_the_ride_with_its_distance() {
        let params = RideParams::new(0.0, 0.0, 0.0, 0.01).unwrap();
        let events = given(&[])
            .decide(&RideCommand::Request { user_id: 1, params })
            .unwrap();
        assert_eq!(
            events,
            vec![RideEvent::Requested {
                user_id: 1,
                distance_mm: params.distance_mm()
            }]
        );
        assert_eq!(events[0].kind(), "ride.created");
    }

    #[test]
    fn a_ride_cannot_be_requested_twice() {
        let params = RideParams::new(0.0, 0.0, 0.0, 0.0).unwrap();
        let h = [RideEvent::Requested {
            user_id: 1,
            distance_mm: 0,
        }];
        assert_eq!(
            given(&h).decide(&RideCommand::Request { user_id: 1, params }),
            Err(RideError::AlreadyRequested)
        );
    }

    #[test]
    fn charge_needs_a_ride_and_is_idempotent() {
        let charge = RideCommand::RecordCharge {
            charge_id: "ch_1".into(),
        };
        assert_eq!(given(&[]).decide(&charge), Err(RideError::NotRequested));
        let requested = [RideEvent::Requested {
            user_id: 1,
            distance_mm: 5,
        }];
        assert_eq!(
            given(&requested).decide(&charge).unwrap(),
            vec![RideEvent::Charged {
                charge_id: "ch_1".into()
            }]
        );
        let charged = [
            requested[0].clone(),
            RideEvent::Charged {
                charge_id: "ch_1".into(),
            },
        ];
        assert_eq!(given(&charged).decide(&charge).unwrap(), vec![]);
        assert_eq!(
            given(&charged).decide(&RideCommand::RecordCharge {
                charge_id: "ch_2".into()
            }),
            Err(RideError::AlreadySettled)
        );
        assert_eq!(
            given(&charged).decide(&RideCommand::RecordDecline {
                message: "no".into()
            }),
            Err(RideError::AlreadySettled)
        );
    }

    #[test]
    fn decline_settles_the_ride() {
        let h = [
            RideEvent::Requested {
                user_id: 2,
                distance_mm: 5,
            },
            RideEvent::Declined {
                message: "Your card was declined.".into(),
            },
        ];
        let ride = given(&h);
        assert_eq!(ride.status(), &RideStatus::Declined);
        assert_eq!(ride.distance_mm(), 5);
        assert_eq!(ride.user_id(), 2);
    }

    /// The request of the replay bug, as a client sends it.
    fn sf() -> [f64; 4] {
        [
            "37.760634058469556",
            "-122.41962585931567",
            "37.79401207930116",
            "-122.39508346185291",
        ]
        .map(|t| t.parse().unwrap())
    }

    fn json_round_trip(p: &RideParams) -> RideParams {
        let text = serde_json::to_string(&p.to_json()).unwrap();
        let via_text: RideParams = serde_json::from_str(&text).unwrap();
        let via_value: RideParams =
            serde_json::from_value(serde_json::from_str::<serde_json::Value>(&text).unwrap())
                .unwrap();
        assert_eq!(via_text, via_value);
        via_text
    }

    #[test]
    fn seventeen_digit_coordinates_survive_the_stored_json() {
        let text = [
            "37.760634058469556",
            "-122.41962585931567",
            "37.79401207930116",
            "-122.39508346185291",
        ];
        let parsed = parse(&[
            ("origin_lat", text[0]),
            ("origin_lon", text[1]),
            ("target_lat", text[2]),
            ("target_lon", text[3]),
        ])
        .unwrap()
        .params;
        let sf = sf();
        assert_eq!(parsed, RideParams::new(sf[0], sf[1], sf[2], sf[3]).unwrap());
        let back = json_round_trip(&parsed);
        assert_eq!(back, parsed);
        assert_eq!(back.origin_lon().to_bits(), sf[1].to_bits());
    }

    #[test]
    fn deserializing_validates_like_the_constructor() {
        let bad = serde_json::json!({
            "origin_lat": 91.0, "origin_lon": 0.0, "target_lat": 0.0, "target_lon": 0.0
        });
        let err = serde_json::from_value::<RideParams>(bad).unwrap_err();
        assert!(
            err.to_string()
                .contains("Parameter 'origin_lat' must be a valid latitude coordinate."),
            "{err}"
        );
        let missing = serde_json::json!({ "origin_lat": 1.0 });
        assert!(serde_json::from_value::<RideParams>(missing).is_err());
        let extra = serde_json::json!({
            "origin_lat": 0.0, "origin_lon": 0.0, "target_lat": 0.0, "target_lon": 0.0, "x": 1
        });
        assert!(serde_json::from_value::<RideParams>(extra).is_err());
        assert_eq!(
            RideParams::new(0.0, 200.0, 0.0, 0.0),
            Err(ParamError::Longitude("origin_lon"))
        );
        assert_eq!(
            RideParams::new(f64::NAN, 0.0, 0.0, 0.0),
            Err(ParamError::NotAFloat("origin_lat"))
        );
    }

    proptest::proptest! {
        #[test]
        fn any_valid_coordinates_round_trip_exactly(
            a in -90.0f64..=90.0, b in -180.0f64..=180.0,
            c in -90.0f64..=90.0, d in -180.0f64..=180.0,
        ) {
            let p = RideParams::new(a, b, c, d).unwrap();
            let back = json_round_trip(&p);
            proptest::prop_assert_eq!(back, p);
            // And through the text a client sends (Rust's shortest round-trip formatting).
            let again = RideParams::new(
                a.to_string().parse().unwrap(), b.to_string().parse().unwrap(),
                c.to_string().parse().unwrap(), d.to_string().parse().unwrap(),
            ).unwrap();
            proptest::prop_assert_eq!(again, p);
        }
    }
}
