//! Event sourcing, the driving part: loading actors from an [`EventStore`](ports::EventStore) and handling a
//! command through a set of actors in one all-or-nothing commit ([`Unit`]).
//!
//! # Layout
//!
//! - [`unit`](mod@unit): the unit of work (sourced's `Sourced::Unit`), plus `load` and
//!   `history_for` (sourced's `Sourced.load` / `history_for`).
//! - [`reactor`]: what runs in the background: actors, handlers, projectors ([`Reactor`]).
//! - [`workflow`]: durable workflows (steps recorded as events, replayed).
//! - [`runtime`]: workers and the housekeeper over a [`ports::ReactorStore`] ([`Runtime`]).
//!
//! # Example
//!
//! An actor, its rules tested with the given/when/then kit, and the same actor handling a
//! command on an event store. This is the example of the README's "Event sourcing" section
//! (a unit test keeps the two identical).
//!
//! ```rust
//! use std::sync::Arc;
//!
//! use adapters::memory::MemoryStore;
//! use app::es::Unit;
//! use domain::es::testing::{Expected, with_actor};
//! use domain::es::{Actor, Emit, Message, MessageError, MessageType, SyncOp};
//! use serde::{Deserialize, Serialize};
//! use serde_json::json;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!
//! #[derive(Serialize, Deserialize)]
//! struct Deposit {
//!     cents: u64,
//! }
//! impl MessageType for Deposit {
//!     const TYPE: &'static str = "account.deposit";
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Deposited {
//!     cents: u64,
//! }
//! impl MessageType for Deposited {
//!     const TYPE: &'static str = "account.deposited";
//! }
//!
//! #[derive(Debug, PartialEq, thiserror::Error)]
//! enum AccountError {
//!     #[error("a deposit must be positive")]
//!     NotPositive,
//!     #[error(transparent)]
//!     Message(#[from] MessageError),
//! }
//!
//! /// A bank account: its state is the balance, in cents.
//! struct Account;
//!
//! impl Actor for Account {
//!     type State = u64;
//!     type Error = AccountError;
//!
//!     fn name(&self) -> &'static str {
//!         "Account"
//!     }
//!     fn initial(&self, _stream_id: &str) -> u64 {
//!         0
//!     }
//!     fn commands(&self) -> Vec<&'static str> {
//!         vec![Deposit::TYPE]
//!     }
//!     fn decide(&self, _balance: &u64, command: &Message) -> Result<Vec<Emit>, AccountError> {
//!         let Deposit { cents } = command.decode()?;
//!         if cents == 0 {
//!             return Err(AccountError::NotPositive);
//!         }
//!         Ok(vec![Emit::new(&Deposited { cents })])
//!     }
//!     fn evolve(&self, balance: &mut u64, message: &Message) -> Result<(), MessageError> {
//!         if message.is::<Deposited>() {
//!             *balance += message.decode::<Deposited>()?.cents;
//!         }
//!         Ok(())
//!     }
//!     fn sync(&self, balance: &u64, command: &Message, _events: &[Message]) -> Vec<SyncOp> {
//!         vec![SyncOp::put("balances", command.stream_id(), json!(balance))]
//!     }
//! }
//!
//! // The rules, given / when / then:
//! with_actor(&Account, "account-1")
//!     .given(&Deposited { cents: 500 })
//!     .when(&Deposit { cents: 250 })
//!     .then(&[Expected::event(&Deposited { cents: 250 })])
//!     .then_sync(&[SyncOp::put("balances", "account-1", json!(750))]);
//! with_actor(&Account, "account-1")
//!     .when(&Deposit { cents: 0 })
//!     .then_error(&AccountError::NotPositive);
//!
//! // The same actor on an event store (in memory here; every backend passes one contract):
//! let store = Arc::new(MemoryStore::default());
//! let unit = Unit::new(Arc::new(store.event_store())).with_actor(Account)?;
//! let now = 1_700_000_000_000;
//! let deposit = Message::build("account-1", &Deposit { cents: 250 }, now)?;
//! let outcome = unit.handle(deposit, now).await?;
//! assert_eq!(outcome.stored.len(), 2); // the command and its event, also staged in the outbox
//! let balance = unit.store().document("balances", "account-1").await?;
//! assert_eq!(balance, Some(json!(250)));
//! # Ok(())
//! # }
//! ```

pub mod board;
pub mod cli;
pub mod demo;
pub mod reactor;
pub mod runtime;
pub mod unit;
pub mod workflow;

pub use reactor::{ActorReactor, Delivery, Handler, Projection, Projector, ProjectorKind, Reactor};
pub use runtime::{FailureReport, Runtime, RuntimeConfig, RuntimeHandle};
pub use unit::{Unit, UnitError, UnitOutcome, history_for, load};

#[cfg(test)]
mod tests {
    /// The visible lines of this module's example (hidden `# ` lines dropped).
    fn example() -> String {
        let src = include_str!("mod.rs");
        let mut lines = Vec::new();
        let mut inside = false;
        for line in src.lines() {
            let Some(doc) = line.strip_prefix("//!") else {
                continue;
            };
            let doc = doc.strip_prefix(' ').unwrap_or(doc);
            if doc.starts_with("```") {
                if inside {
                    break;
                }
                inside = true;
                continue;
            }
            if inside && !(doc == "#" || doc.starts_with("# ")) {
                lines.push(doc);
            }
        }
        lines.join("\n")
    }

    #[test]
    fn the_readme_example_is_this_modules_doctest() {
        let readme = include_str!("../../../README.md");
        let block = format!("```rust\n{}\n```", example());
        assert!(
            readme.contains(&block),
            "README.md's \"Event sourcing\" example must be app::es's doctest:\n{block}"
        );
    }
}
