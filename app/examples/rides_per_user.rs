//! Writing your own consumer: rides per user, on any store and any log.
//!
//! ```text
//! cargo run -p app --example rides_per_user                       # in memory
//! cargo run -p app --example rides_per_user -- sqlite://./data/rides.db sled://./data/log
//! ```
//!
//! The handler is a [`Fold`]: a pure function from (state, record) to state. The runtime
//! reads the log in batches, skips duplicates, saves the state with the checkpoint in one
//! transaction, follows log cutovers, retries failures and (with a lease) keeps one active
//! instance. The same program on a store with rides in it counts them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use app::runtime::{Consumer, Fold, OnFailure, Policy, Transactional};
use app::services::Outcome;
use domain::record::kinds;
use ports::{Delivery, SystemClock};

/// Rides per user id.
struct RidesPerUser;

impl Fold for RidesPerUser {
    type State = BTreeMap<i64, u64>;
    const KIND: &'static str = "rides-per-user";

    fn apply(&self, state: &mut Self::State, d: &Delivery) -> Result<(), String> {
        if d.record.kind != kinds::RIDE_CREATED {
            return Ok(());
        }
        let user = d.record.payload["user_id"]
            .as_i64()
            .ok_or_else(|| format!("ride.created seq {} has no user_id", d.record.seq))?;
        *state.entry(user).or_default() += 1;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let store = args.next().unwrap_or_else(|| "memory://".into());
    let log = args.next().unwrap_or_else(|| "memory://".into());
    let stores = app::wiring::open_store(&store).await?;
    let log = app::wiring::open_log(&log, &stores).await?;

    let consumer = Consumer::new(
        "rides-per-user",
        Transactional(RidesPerUser),
        log.log.clone(),
        stores.consumers.clone(),
        Arc::new(SystemClock),
    )
    .following(log.clone())
    .with_wait(Duration::from_millis(100))
    .with_policy(Policy {
        max_attempts: 3,
        on_failure: OnFailure::Park,
    });

    // Catch up, then stop (a service would call `consumer.run(shutdown)` instead).
    while let Outcome::Worked(n) = consumer.step().await? {
        println!("handled a batch of {n} records");
    }
    let cp = stores.consumers.load("rides-per-user").await?;
    let state = cp.map(|cp| cp.state).unwrap_or_default();
    println!("rides per user: {state}");
    Ok(())
}
