//! The dispatch board: a state-stored read model of the ride dispatch example
//! (`domain::es::dispatch`), one document per stream in the `dispatch_board` collection:
//! a ride's status and pilot, a pilot's status and current ride. Run by `rides es work` as
//! the group `dispatch-board`; `rides es reset dispatch-board` rebuilds it.

use domain::es::Message;
use domain::es::MessageType;
use domain::es::dispatch::{
    PilotAssigned, RideAccepted, RideCancelled, RideCompleted, RideFinished, RideRequested,
    RiderPickedUp, WentOffline, WentOnline,
};
use serde_json::{Value, json};

use super::reactor::Projection;

/// The board's collection.
pub const BOARD: &str = "dispatch_board";

/// The dispatch board projection. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct DispatchBoard;

impl Projection for DispatchBoard {
    fn group_id(&self) -> &str {
        "dispatch-board"
    }

    fn types(&self) -> Vec<&'static str> {
        vec![
            RideRequested::TYPE,
            PilotAssigned::TYPE,
            RiderPickedUp::TYPE,
            RideCompleted::TYPE,
            RideCancelled::TYPE,
            WentOnline::TYPE,
            WentOffline::TYPE,
            RideAccepted::TYPE,
            RideFinished::TYPE,
        ]
    }

    fn collection(&self) -> &str {
        BOARD
    }

    fn initial(&self, _stream_id: &str) -> Value {
        json!({})
    }

    fn evolve(&self, doc: &mut Value, m: &Message) -> Result<(), String> {
        let err = |e: domain::es::MessageError| e.to_string();
        let set = |doc: &mut Value, kind: &str, status: &str| {
            doc["kind"] = json!(kind);
            doc["status"] = json!(status);
        };
        match m.kind() {
            RideRequested::TYPE => set(doc, "ride", "requested"),
            PilotAssigned::TYPE => {
                set(doc, "ride", "assigned");
                doc["pilot_id"] = json!(m.decode::<PilotAssigned>().map_err(err)?.pilot_id);
            }
            RiderPickedUp::TYPE => set(doc, "ride", "picked_up"),
            RideCompleted::TYPE => set(doc, "ride", "completed"),
            RideCancelled::TYPE => set(doc, "ride", "cancelled"),
            WentOnline::TYPE => {
                set(doc, "pilot", "online");
                doc["name"] = json!(m.decode::<WentOnline>().map_err(err)?.name);
            }
            WentOffline::TYPE => set(doc, "pilot", "offline"),
            RideAccepted::TYPE => {
                set(doc, "pilot", "busy");
                doc["ride_id"] = json!(m.decode::<RideAccepted>().map_err(err)?.ride_id);
            }
            RideFinished::TYPE => {
                set(doc, "pilot", "online");
                doc["ride_id"] = Value::Null;
            }
            _ => {}
        }
        Ok(())
    }
}
