//! The decider pattern: `decide(&State, &Command) -> Result<Vec<Event>, Rejection>`
//! and `evolve(State, &Event) -> Result<State, InvalidHistory>`.
//!
//! Architecture Invariant: deciders are synchronous and pure. Time, ids and
//! PSP results arrive inside the command; nothing here reads a clock.

use std::fmt::Debug;

use crate::codec::EventSet;

/// A stored event that the current core cannot apply in its position.
/// Loading such a stream fails loudly; `ledger verify` reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event_type} cannot apply to a stream in state {state}")]
pub struct InvalidHistory {
    pub state: String,
    pub event_type: String,
}

pub trait Decider {
    type State: Default + Clone + Debug + PartialEq;
    type Command: Debug;
    type Event: EventSet + Debug + PartialEq;
    type Rejection: std::error::Error + Clone + PartialEq + Send + Sync + 'static;

    /// Stream id prefix, e.g. `order` for `order-{uuid}`.
    const STREAM_KIND: &'static str;

    /// Which events a command produces. A command the state already reflects
    /// (a duplicate) yields `Ok(vec![])`.
    fn decide(
        state: &Self::State,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// Applies one event. Total over every event `decide` can produce from
    /// the state it is applied to; anything else is [`InvalidHistory`].
    fn evolve(state: Self::State, event: &Self::Event) -> Result<Self::State, InvalidHistory>;

    /// Folds a history from the empty state.
    fn fold<'a>(
        events: impl IntoIterator<Item = &'a Self::Event>,
    ) -> Result<Self::State, InvalidHistory>
    where
        Self::Event: 'a,
    {
        events
            .into_iter()
            .try_fold(Self::State::default(), |s, e| Self::evolve(s, e))
    }
}
