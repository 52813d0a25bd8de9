//! Ride dispatch on the event-sourcing layer: the example of issue 9 §6.
//!
//! Two actors, keyed by stream id (`ride-…` and `pilot-…`; a ride names its pilot by the
//! pilot's stream id and a pilot its ride by the ride's):
//!
//! ```text
//!  ride.request ─▶ Ride ─▶ ride.requested
//!  ride.assign_pilot ─▶ Ride ─▶ ride.pilot_assigned ──react──▶ pilot.accept_ride ─▶ Pilot
//!                                                                  └▶ pilot.ride_accepted
//!  ride.pick_up ─▶ Ride ─▶ ride.picked_up
//!  ride.complete ─▶ Ride ─▶ ride.completed ──react──▶ pilot.finish_ride ─▶ Pilot
//!  ride.cancel ─▶ Ride ─▶ ride.cancelled ──react (if a pilot)──▶ pilot.finish_ride    └▶ pilot.ride_finished
//!  pilot.go_online / pilot.go_offline ─▶ Pilot ─▶ pilot.went_online / pilot.went_offline
//! ```
//!
//! In a unit of work the reaction runs in the same transaction, so a pilot who already has a
//! ride (or is offline) refuses `pilot.accept_ride` and the assignment is rolled back with it:
//! "at most one active ride per pilot" holds across the two streams.
//!
//! Both actors keep a read model with their sync hook: documents `rides/<ride id>` and
//! `pilots/<pilot id>`.

use serde::{Deserialize, Serialize};
use serde_json::json;
use thiserror::Error;

use super::actor::{Actor, Emit};
use super::message::{FieldError, Message, MessageError, MessageType};
use super::registry::Registry;
use super::sync::SyncOp;

/// The registry scope of the commands a dispatch client may send.
pub const COMMANDS: &str = "dispatch.commands";
/// The registry scope of the dispatch events.
pub const EVENTS: &str = "dispatch.events";

fn non_empty(field: &str, value: &str) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    Ok(())
}

macro_rules! message_type {
    ($(#[$doc:meta])* $name:ident = $ty:literal { $($(#[$fdoc:meta])* $field:ident : $fty:ty),* $(,)? } $(check $($check:ident),+)?) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $fty,)*
        }
        impl MessageType for $name {
            const TYPE: &'static str = $ty;
            fn validate(&self) -> Result<(), FieldError> {
                $($(non_empty(stringify!($check), &self.$check)?;)+)?
                Ok(())
            }
        }
    };
}

message_type!(
    /// Command: a rider asks for a ride.
    RequestRide = "ride.request" {
        /// The rider.
        rider_id: String,
        /// Where to pick up.
        pickup: String,
        /// Where to go.
        dropoff: String,
    } check rider_id, pickup, dropoff
);
message_type!(
    /// Command: give the ride a pilot (a pilot stream id).
    AssignPilot = "ride.assign_pilot" {
        /// The pilot's stream id.
        pilot_id: String,
    } check pilot_id
);
message_type!(
    /// Command: the pilot picked the rider up.
    PickUp = "ride.pick_up" {}
);
message_type!(
    /// Command: the ride is over.
    CompleteRide = "ride.complete" {}
);
message_type!(
    /// Command: call the ride off.
    CancelRide = "ride.cancel" {
        /// Why.
        reason: String,
    }
);
message_type!(
    /// Event: a ride was requested.
    RideRequested = "ride.requested" {
        /// The rider.
        rider_id: String,
        /// Where to pick up.
        pickup: String,
        /// Where to go.
        dropoff: String,
    }
);
message_type!(
    /// Event: the ride has a pilot.
    PilotAssigned = "ride.pilot_assigned" {
        /// The pilot's stream id.
        pilot_id: String,
    }
);
message_type!(
    /// Event: the rider is on board.
    RiderPickedUp = "ride.picked_up" {}
);
message_type!(
    /// Event: the ride is over.
    RideCompleted = "ride.completed" {
        /// The pilot who drove.
        pilot_id: String,
    }
);
message_type!(
    /// Event: the ride was called off.
    RideCancelled = "ride.cancelled" {
        /// Why.
        reason: String,
        /// The pilot it had, who is free again.
        pilot_id: Option<String>,
    }
);
message_type!(
    /// Command: a pilot starts taking rides.
    GoOnline = "pilot.go_online" {
        /// The pilot's display name.
        name: String,
    } check name
);
message_type!(
    /// Command: a pilot stops taking rides.
    GoOffline = "pilot.go_offline" {}
);
message_type!(
    /// Command (sent by the Ride actor's reaction): the pilot takes this ride.
    AcceptRide = "pilot.accept_ride" {
        /// The ride's stream id.
        ride_id: String,
    } check ride_id
);
message_type!(
    /// Command (sent by the Ride actor's reaction): the pilot's ride is over or cancelled.
    FinishRide = "pilot.finish_ride" {
        /// The ride's stream id.
        ride_id: String,
    } check ride_id
);
message_type!(
    /// Event: the pilot is online.
    WentOnline = "pilot.went_online" {
        /// The pilot's display name.
        name: String,
    }
);
message_type!(
    /// Event: the pilot is offline.
    WentOffline = "pilot.went_offline" {}
);
message_type!(
    /// Event: the pilot took a ride.
    RideAccepted = "pilot.ride_accepted" {
        /// The ride's stream id.
        ride_id: String,
    }
);
message_type!(
    /// Event: the pilot's ride is over; the pilot is free.
    RideFinished = "pilot.ride_finished" {
        /// The ride's stream id.
        ride_id: String,
    }
);

/// The registry of dispatch messages: commands in [`COMMANDS`] (except the ones only
/// reactions send, which clients may not), events in [`EVENTS`].
pub fn registry() -> Registry {
    Registry::new()
        .with::<RequestRide>(COMMANDS)
        .with::<AssignPilot>(COMMANDS)
        .with::<PickUp>(COMMANDS)
        .with::<CompleteRide>(COMMANDS)
        .with::<CancelRide>(COMMANDS)
        .with::<GoOnline>(COMMANDS)
        .with::<GoOffline>(COMMANDS)
        .with::<AcceptRide>(EVENTS)
        .with::<FinishRide>(EVENTS)
        .with::<RideRequested>(EVENTS)
        .with::<PilotAssigned>(EVENTS)
        .with::<RiderPickedUp>(EVENTS)
        .with::<RideCompleted>(EVENTS)
        .with::<RideCancelled>(EVENTS)
        .with::<WentOnline>(EVENTS)
        .with::<WentOffline>(EVENTS)
        .with::<RideAccepted>(EVENTS)
        .with::<RideFinished>(EVENTS)
}

/// Where a ride is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RideStatus {
    /// Nothing happened yet.
    New,
    /// Waiting for a pilot.
    Requested,
    /// A pilot is on the way.
    Assigned,
    /// The rider is on board.
    PickedUp,
    /// Over.
    Completed,
    /// Called off.
    Cancelled,
}

/// The Ride actor's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RideState {
    /// The ride's stream id.
    pub ride_id: String,
    /// Where it is in its life.
    pub status: RideStatus,
    /// The rider, once requested.
    pub rider_id: Option<String>,
    /// The pilot, once assigned.
    pub pilot_id: Option<String>,
}

/// The Ride actor's refusals.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RideError {
    /// `ride.request` on a ride that exists.
    #[error("ride {ride_id} was already requested")]
    AlreadyRequested {
        /// The ride.
        ride_id: String,
    },
    /// A command that needs a requested ride.
    #[error("ride {ride_id} was not requested")]
    NotRequested {
        /// The ride.
        ride_id: String,
    },
    /// `ride.assign_pilot` on a ride that has a pilot.
    #[error("ride {ride_id} already has a pilot ({pilot_id})")]
    AlreadyAssigned {
        /// The ride.
        ride_id: String,
        /// Its pilot.
        pilot_id: String,
    },
    /// `ride.pick_up` before a pilot was assigned, or twice.
    #[error("ride {ride_id} cannot be picked up while {status:?}")]
    CannotPickUp {
        /// The ride.
        ride_id: String,
        /// Its status.
        status: RideStatus,
    },
    /// `ride.complete` before pick-up.
    #[error("ride {ride_id} cannot be completed while {status:?}")]
    CannotComplete {
        /// The ride.
        ride_id: String,
        /// Its status.
        status: RideStatus,
    },
    /// `ride.cancel` on a completed ride.
    #[error("ride {ride_id} is completed and cannot be cancelled")]
    CompletedCannotBeCancelled {
        /// The ride.
        ride_id: String,
    },
    /// `ride.cancel` once the rider is on board.
    #[error("ride {ride_id} is under way and cannot be cancelled")]
    UnderWayCannotBeCancelled {
        /// The ride.
        ride_id: String,
    },
    /// A command on a cancelled ride.
    #[error("ride {ride_id} was cancelled")]
    Cancelled {
        /// The ride.
        ride_id: String,
    },
    /// A payload that does not decode.
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// The Ride actor. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ride;

impl Actor for Ride {
    type State = RideState;
    type Error = RideError;

    fn name(&self) -> &'static str {
        "Ride"
    }

    fn initial(&self, stream_id: &str) -> RideState {
        RideState {
            ride_id: stream_id.to_owned(),
            status: RideStatus::New,
            rider_id: None,
            pilot_id: None,
        }
    }

    fn commands(&self) -> Vec<&'static str> {
        vec![
            RequestRide::TYPE,
            AssignPilot::TYPE,
            PickUp::TYPE,
            CompleteRide::TYPE,
            CancelRide::TYPE,
        ]
    }

    fn reactions(&self) -> Vec<&'static str> {
        vec![
            PilotAssigned::TYPE,
            RideCompleted::TYPE,
            RideCancelled::TYPE,
        ]
    }

    fn decide(&self, s: &RideState, command: &Message) -> Result<Vec<Emit>, RideError> {
        use RideStatus as S;
        let ride_id = s.ride_id.clone();
        if command.kind() != RequestRide::TYPE {
            match s.status {
                S::New => return Err(RideError::NotRequested { ride_id }),
                S::Cancelled => return Err(RideError::Cancelled { ride_id }),
                _ => {}
            }
        }
        let emit = match command.kind() {
            RequestRide::TYPE => {
                let c: RequestRide = command.decode()?;
                if s.status != S::New {
                    return Err(RideError::AlreadyRequested { ride_id });
                }
                Emit::new(&RideRequested {
                    rider_id: c.rider_id,
                    pickup: c.pickup,
                    dropoff: c.dropoff,
                })
            }
            AssignPilot::TYPE => {
                let c: AssignPilot = command.decode()?;
                if let Some(pilot_id) = s.pilot_id.clone() {
                    return Err(RideError::AlreadyAssigned { ride_id, pilot_id });
                }
                if s.status != S::Requested {
                    return Err(RideError::NotRequested { ride_id });
                }
                Emit::new(&PilotAssigned {
                    pilot_id: c.pilot_id,
                })
            }
            PickUp::TYPE => {
                command.decode::<PickUp>()?;
                if s.status != S::Assigned {
                    return Err(RideError::CannotPickUp {
                        ride_id,
                        status: s.status,
                    });
                }
                Emit::new(&RiderPickedUp {})
            }
            CompleteRide::TYPE => {
                command.decode::<CompleteRide>()?;
                match (s.status, &s.pilot_id) {
                    (S::PickedUp, Some(pilot_id)) => Emit::new(&RideCompleted {
                        pilot_id: pilot_id.clone(),
                    }),
                    _ => {
                        return Err(RideError::CannotComplete {
                            ride_id,
                            status: s.status,
                        });
                    }
                }
            }
            CancelRide::TYPE => {
                let c: CancelRide = command.decode()?;
                match s.status {
                    S::Completed => return Err(RideError::CompletedCannotBeCancelled { ride_id }),
                    S::PickedUp => return Err(RideError::UnderWayCannotBeCancelled { ride_id }),
                    _ => Emit::new(&RideCancelled {
                        reason: c.reason,
                        pilot_id: s.pilot_id.clone(),
                    }),
                }
            }
            _ => return Ok(Vec::new()),
        };
        Ok(vec![emit])
    }

    fn evolve(&self, s: &mut RideState, m: &Message) -> Result<(), MessageError> {
        match m.kind() {
            RideRequested::TYPE => {
                let e: RideRequested = m.decode()?;
                s.status = RideStatus::Requested;
                s.rider_id = Some(e.rider_id);
            }
            PilotAssigned::TYPE => {
                let e: PilotAssigned = m.decode()?;
                s.status = RideStatus::Assigned;
                s.pilot_id = Some(e.pilot_id);
            }
            RiderPickedUp::TYPE => s.status = RideStatus::PickedUp,
            RideCompleted::TYPE => s.status = RideStatus::Completed,
            RideCancelled::TYPE => s.status = RideStatus::Cancelled,
            _ => {}
        }
        Ok(())
    }

    fn react(&self, _: &RideState, event: &Message) -> Result<Vec<Message>, RideError> {
        let ride_id = event.stream_id().to_owned();
        let at = event.created_at_ms();
        let pilot_command = |pilot_id: &str, finish: bool| -> Result<Message, RideError> {
            Ok(if finish {
                Message::build(
                    pilot_id,
                    &FinishRide {
                        ride_id: ride_id.clone(),
                    },
                    at,
                )?
            } else {
                Message::build(
                    pilot_id,
                    &AcceptRide {
                        ride_id: ride_id.clone(),
                    },
                    at,
                )?
            })
        };
        Ok(match event.kind() {
            PilotAssigned::TYPE => {
                vec![pilot_command(
                    &event.decode::<PilotAssigned>()?.pilot_id,
                    false,
                )?]
            }
            RideCompleted::TYPE => {
                vec![pilot_command(
                    &event.decode::<RideCompleted>()?.pilot_id,
                    true,
                )?]
            }
            RideCancelled::TYPE => match event.decode::<RideCancelled>()?.pilot_id {
                Some(pilot_id) => vec![pilot_command(&pilot_id, true)?],
                None => Vec::new(),
            },
            _ => Vec::new(),
        })
    }

    fn sync(&self, s: &RideState, _: &Message, events: &[Message]) -> Vec<SyncOp> {
        if events.is_empty() {
            return Vec::new();
        }
        vec![SyncOp::put(
            "rides",
            s.ride_id.clone(),
            json!({"status": s.status, "rider_id": s.rider_id, "pilot_id": s.pilot_id}),
        )]
    }
}

/// The Pilot actor's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PilotState {
    /// The pilot's stream id.
    pub pilot_id: String,
    /// Taking rides.
    pub online: bool,
    /// The display name, once online.
    pub name: Option<String>,
    /// The ride in progress (at most one).
    pub active_ride: Option<String>,
}

/// The Pilot actor's refusals.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PilotError {
    /// `pilot.accept_ride` while offline.
    #[error("pilot {pilot_id} is offline")]
    Offline {
        /// The pilot.
        pilot_id: String,
    },
    /// `pilot.accept_ride` with a ride in progress.
    #[error("pilot {pilot_id} already has an active ride ({ride_id})")]
    Busy {
        /// The pilot.
        pilot_id: String,
        /// The active ride.
        ride_id: String,
    },
    /// `pilot.go_offline` with a ride in progress.
    #[error("pilot {pilot_id} cannot go offline during ride {ride_id}")]
    OfflineDuringRide {
        /// The pilot.
        pilot_id: String,
        /// The active ride.
        ride_id: String,
    },
    /// `pilot.finish_ride` for a ride that is not the pilot's active one.
    #[error("ride {ride_id} is not pilot {pilot_id}'s active ride")]
    NotActiveRide {
        /// The pilot.
        pilot_id: String,
        /// The ride named.
        ride_id: String,
    },
    /// A payload that does not decode.
    #[error(transparent)]
    Message(#[from] MessageError),
}

/// The Pilot actor. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pilot;

impl Actor for Pilot {
    type State = PilotState;
    type Error = PilotError;

    fn name(&self) -> &'static str {
        "Pilot"
    }

    fn initial(&self, stream_id: &str) -> PilotState {
        PilotState {
            pilot_id: stream_id.to_owned(),
            online: false,
            name: None,
            active_ride: None,
        }
    }

    fn commands(&self) -> Vec<&'static str> {
        vec![
            GoOnline::TYPE,
            GoOffline::TYPE,
            AcceptRide::TYPE,
            FinishRide::TYPE,
        ]
    }

    fn decide(&self, s: &PilotState, command: &Message) -> Result<Vec<Emit>, PilotError> {
        let pilot_id = s.pilot_id.clone();
        let emit = match command.kind() {
            GoOnline::TYPE => {
                let c: GoOnline = command.decode()?;
                if s.online {
                    return Ok(Vec::new());
                }
                Emit::new(&WentOnline { name: c.name })
            }
            GoOffline::TYPE => {
                command.decode::<GoOffline>()?;
                if let Some(ride_id) = s.active_ride.clone() {
                    return Err(PilotError::OfflineDuringRide { pilot_id, ride_id });
                }
                if !s.online {
                    return Ok(Vec::new());
                }
                Emit::new(&WentOffline {})
            }
            AcceptRide::TYPE => {
                let c: AcceptRide = command.decode()?;
                if let Some(ride_id) = s.active_ride.clone() {
                    return Err(PilotError::Busy { pilot_id, ride_id });
                }
                if !s.online {
                    return Err(PilotError::Offline { pilot_id });
                }
                Emit::new(&RideAccepted { ride_id: c.ride_id })
            }
            FinishRide::TYPE => {
                let c: FinishRide = command.decode()?;
                if s.active_ride.as_deref() != Some(c.ride_id.as_str()) {
                    return Err(PilotError::NotActiveRide {
                        pilot_id,
                        ride_id: c.ride_id,
                    });
                }
                Emit::new(&RideFinished { ride_id: c.ride_id })
            }
            _ => return Ok(Vec::new()),
        };
        Ok(vec![emit])
    }

    fn evolve(&self, s: &mut PilotState, m: &Message) -> Result<(), MessageError> {
        match m.kind() {
            WentOnline::TYPE => {
                s.online = true;
                s.name = Some(m.decode::<WentOnline>()?.name);
            }
            WentOffline::TYPE => s.online = false,
            RideAccepted::TYPE => s.active_ride = Some(m.decode::<RideAccepted>()?.ride_id),
            RideFinished::TYPE => s.active_ride = None,
            _ => {}
        }
        Ok(())
    }

    fn sync(&self, s: &PilotState, _: &Message, events: &[Message]) -> Vec<SyncOp> {
        if events.is_empty() {
            return Vec::new();
        }
        vec![SyncOp::put(
            "pilots",
            s.pilot_id.clone(),
            json!({"online": s.online, "name": s.name, "active_ride": s.active_ride}),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::es::actor::check_roles;
    use crate::es::testing::{Expected, with_actor};

    fn requested() -> RideRequested {
        RideRequested {
            rider_id: "u1".into(),
            pickup: "Market St".into(),
            dropoff: "Mission St".into(),
        }
    }
    fn assigned() -> PilotAssigned {
        PilotAssigned {
            pilot_id: "pilot-7".into(),
        }
    }
    fn ride(ride: &str) -> String {
        ride.to_owned()
    }

    #[test]
    fn roles_are_consistent() {
        assert!(check_roles(&Ride).is_ok());
        assert!(check_roles(&Pilot).is_ok());
    }

    #[test]
    fn a_ride_is_requested_once() {
        with_actor(&Ride, "ride-1")
            .when(&RequestRide {
                rider_id: "u1".into(),
                pickup: "Market St".into(),
                dropoff: "Mission St".into(),
            })
            .then(&[Expected::event(&requested())])
            .then_sync(&[SyncOp::put(
                "rides",
                "ride-1",
                json!({"status": "requested", "rider_id": "u1", "pilot_id": null}),
            )]);
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .when(&RequestRide {
                rider_id: "u2".into(),
                pickup: "a".into(),
                dropoff: "b".into(),
            })
            .then_error(&RideError::AlreadyRequested {
                ride_id: ride("ride-1"),
            });
    }

    #[test]
    fn a_pilot_is_assigned_to_a_requested_ride_only_once() {
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .when(&AssignPilot {
                pilot_id: "pilot-7".into(),
            })
            .then(&[Expected::event(&assigned())]);
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .and(&assigned())
            .when(&AssignPilot {
                pilot_id: "pilot-8".into(),
            })
            .then_error(&RideError::AlreadyAssigned {
                ride_id: ride("ride-1"),
                pilot_id: "pilot-7".into(),
            });
        with_actor(&Ride, "ride-1")
            .when(&AssignPilot {
                pilot_id: "pilot-7".into(),
            })
            .then_error(&RideError::NotRequested {
                ride_id: ride("ride-1"),
            });
    }

    #[test]
    fn pick_up_and_complete_in_order() {
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .when(&PickUp {})
            .then_error(&RideError::CannotPickUp {
                ride_id: ride("ride-1"),
                status: RideStatus::Requested,
            });
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .and(&assigned())
            .when(&PickUp {})
            .then(&[Expected::event(&RiderPickedUp {})]);
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .and(&assigned())
            .when(&CompleteRide {})
            .then_error(&RideError::CannotComplete {
                ride_id: ride("ride-1"),
                status: RideStatus::Assigned,
            });
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .and(&assigned())
            .and(&RiderPickedUp {})
            .when(&CompleteRide {})
            .then(&[Expected::event(&RideCompleted {
                pilot_id: "pilot-7".into(),
            })]);
    }

    #[test]
    fn a_completed_ride_cannot_be_cancelled() {
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .and(&assigned())
            .and(&RiderPickedUp {})
            .and(&RideCompleted {
                pilot_id: "pilot-7".into(),
            })
            .when(&CancelRide {
                reason: "changed my mind".into(),
            })
            .then_error(&RideError::CompletedCannotBeCancelled {
                ride_id: ride("ride-1"),
            })
            .then_error_message("ride ride-1 is completed and cannot be cancelled");
    }

    #[test]
    fn cancelling_frees_the_pilot_and_blocks_later_commands() {
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .and(&assigned())
            .when(&CancelRide {
                reason: "rain".into(),
            })
            .then(&[Expected::event(&RideCancelled {
                reason: "rain".into(),
                pilot_id: Some("pilot-7".into()),
            })]);
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .and(&RideCancelled {
                reason: "rain".into(),
                pilot_id: None,
            })
            .when(&AssignPilot {
                pilot_id: "pilot-7".into(),
            })
            .then_error(&RideError::Cancelled {
                ride_id: ride("ride-1"),
            });
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .and(&assigned())
            .and(&RiderPickedUp {})
            .when(&CancelRide { reason: "x".into() })
            .then_error(&RideError::UnderWayCannotBeCancelled {
                ride_id: ride("ride-1"),
            });
    }

    #[test]
    fn ride_reactions_send_commands_to_the_pilot() {
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .when(&assigned())
            .then(&[Expected::on(
                "pilot-7",
                &AcceptRide {
                    ride_id: ride("ride-1"),
                },
            )]);
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .and(&assigned())
            .and(&RiderPickedUp {})
            .when(&RideCompleted {
                pilot_id: "pilot-7".into(),
            })
            .then(&[Expected::on(
                "pilot-7",
                &FinishRide {
                    ride_id: ride("ride-1"),
                },
            )]);
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .when(&RideCancelled {
                reason: "x".into(),
                pilot_id: None,
            })
            .then_nothing();
    }

    #[test]
    fn a_pilot_has_at_most_one_active_ride() {
        let online = WentOnline {
            name: "Amelia".into(),
        };
        with_actor(&Pilot, "pilot-7")
            .given(&online)
            .when(&AcceptRide {
                ride_id: ride("ride-1"),
            })
            .then(&[Expected::event(&RideAccepted {
                ride_id: ride("ride-1"),
            })])
            .then_sync(&[SyncOp::put(
                "pilots",
                "pilot-7",
                json!({"online": true, "name": "Amelia", "active_ride": "ride-1"}),
            )]);
        with_actor(&Pilot, "pilot-7")
            .given(&online)
            .and(&RideAccepted {
                ride_id: ride("ride-1"),
            })
            .when(&AcceptRide {
                ride_id: ride("ride-2"),
            })
            .then_error(&PilotError::Busy {
                pilot_id: "pilot-7".into(),
                ride_id: ride("ride-1"),
            });
        with_actor(&Pilot, "pilot-7")
            .given(&online)
            .and(&RideAccepted {
                ride_id: ride("ride-1"),
            })
            .and(&RideFinished {
                ride_id: ride("ride-1"),
            })
            .when(&AcceptRide {
                ride_id: ride("ride-2"),
            })
            .then(&[Expected::event(&RideAccepted {
                ride_id: ride("ride-2"),
            })]);
    }

    #[test]
    fn an_offline_pilot_takes_no_ride_and_a_busy_one_stays_online() {
        with_actor(&Pilot, "pilot-7")
            .when(&AcceptRide {
                ride_id: ride("ride-1"),
            })
            .then_error(&PilotError::Offline {
                pilot_id: "pilot-7".into(),
            });
        with_actor(&Pilot, "pilot-7")
            .given(&WentOnline { name: "A".into() })
            .and(&RideAccepted {
                ride_id: ride("ride-1"),
            })
            .when(&GoOffline {})
            .then_error(&PilotError::OfflineDuringRide {
                pilot_id: "pilot-7".into(),
                ride_id: ride("ride-1"),
            });
        with_actor(&Pilot, "pilot-7")
            .given(&WentOnline { name: "A".into() })
            .when(&GoOffline {})
            .then(&[Expected::event(&WentOffline {})]);
        with_actor(&Pilot, "pilot-7")
            .given(&WentOnline { name: "A".into() })
            .when(&GoOnline { name: "A".into() })
            .then_nothing();
        with_actor(&Pilot, "pilot-7")
            .given(&WentOnline { name: "A".into() })
            .when(&FinishRide {
                ride_id: ride("ride-9"),
            })
            .then_error(&PilotError::NotActiveRide {
                pilot_id: "pilot-7".into(),
                ride_id: ride("ride-9"),
            });
    }

    #[test]
    fn a_bad_payload_names_its_field() {
        let bad =
            Message::new(AssignPilot::TYPE, "ride-1", json!({"pilot": "pilot-7"}), 0).unwrap();
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .when_message(bad)
            .then_error_message("payload.pilot: unknown field `pilot`, expected `pilot_id`");
        let err = registry()
            .build(
                COMMANDS,
                &json!({"type": "ride.assign_pilot", "stream_id": "ride-1", "payload": {}}),
                0,
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "payload.pilot_id: missing field");
        let err = registry()
            .build(
                COMMANDS,
                &json!({"type": "pilot.accept_ride", "stream_id": "pilot-1", "payload": {"ride_id": "r"}}),
                0,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Unknown message type: pilot.accept_ride",
            "clients cannot send the reaction-only commands"
        );
    }

    #[test]
    #[should_panic(expected = "FinishedTestCase: given after an assertion")]
    fn given_after_then_is_a_clear_error() {
        let mut case = with_actor(&Ride, "ride-1");
        case.given(&requested())
            .when(&AssignPilot {
                pilot_id: "pilot-7".into(),
            })
            .then(&[Expected::event(&assigned())]);
        case.given(&assigned());
    }

    #[test]
    #[should_panic(expected = "FinishedTestCase: when after an assertion")]
    fn when_after_then_is_a_clear_error() {
        let mut case = with_actor(&Ride, "ride-1");
        case.when(&RequestRide {
            rider_id: "u".into(),
            pickup: "a".into(),
            dropoff: "b".into(),
        })
        .then(&[Expected::event(&RideRequested {
            rider_id: "u".into(),
            pickup: "a".into(),
            dropoff: "b".into(),
        })]);
        case.when(&PickUp {});
    }

    #[test]
    #[should_panic(expected = "unexpected messages")]
    fn a_wrong_expectation_fails() {
        with_actor(&Ride, "ride-1")
            .given(&requested())
            .when(&AssignPilot {
                pilot_id: "pilot-7".into(),
            })
            .then(&[Expected::event(&PilotAssigned {
                pilot_id: "pilot-8".into(),
            })]);
    }
}
