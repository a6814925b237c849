//! `ledger replay <stream>`: every stored event of one stream, each followed
//! by the state the current core folds from the history up to it. The hash
//! chain is checked on the way, so a replay is also a per-stream audit.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use ledger_core::events::StreamKind;
use ledger_core::hash::ChainVerifier;
use ledger_core::ids::StreamId;
use ledger_core::order::Order;
use ledger_core::refund::Refund;
use ledger_core::transfer::SellerTransfer;
use ledger_core::{Decider, RecordedEvent};
use ledger_projections::journal::AsOf;
use ledger_store::{EventStore, READ_BATCH_MAX};
use serde::Serialize;

/// Reads a whole stream, page by page.
pub async fn read_whole_stream(
    store: &dyn EventStore,
    stream: &StreamId,
) -> anyhow::Result<Vec<RecordedEvent>> {
    let mut events = Vec::new();
    let mut from = 1;
    loop {
        let page = store.read_stream(stream, from, READ_BATCH_MAX).await?;
        let full = page.len() >= READ_BATCH_MAX as usize;
        if let Some(last) = page.last() {
            from = last.stream_version + 1;
        }
        events.extend(page);
        if !full {
            return Ok(events);
        }
    }
}

/// One replay step, as printed with `--json`.
#[derive(Debug, Serialize)]
struct Step<'a, S: Serialize> {
    stream_id: &'a str,
    stream_version: u64,
    global_position: u64,
    recorded_at: String,
    event_id: String,
    event_type: &'a str,
    payload: serde_json::Value,
    metadata: serde_json::Value,
    hash: String,
    state: &'a S,
}

fn replay_as<D>(events: &[RecordedEvent], json: bool, out: &mut dyn Write) -> anyhow::Result<()>
where
    D: Decider,
    D::State: Serialize,
{
    let mut state = D::State::default();
    for e in events {
        let event =
            ledger_core::codec::decode::<D::Event>(&e.event_type, e.schema_version, &e.payload)
                .with_context(|| {
                    format!(
                        "{} version {}: cannot decode",
                        e.stream_id, e.stream_version
                    )
                })?;
        state = D::evolve(state, &event).with_context(|| {
            format!(
                "{} version {}: the core rejects this history",
                e.stream_id, e.stream_version
            )
        })?;
        let step = Step {
            stream_id: e.stream_id.as_str(),
            stream_version: e.stream_version,
            global_position: e.global_position,
            recorded_at: e.recorded_at.to_rfc3339(),
            event_id: e.event_id.to_string(),
            event_type: &e.event_type,
            payload: serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::Null),
            metadata: serde_json::from_str(&e.metadata).unwrap_or(serde_json::Value::Null),
            hash: hex_short(&e.hash),
            state: &state,
        };
        if json {
            writeln!(out, "{}", serde_json::to_string(&step)?)?;
        } else {
            writeln!(
                out,
                "── v{} · pos {} · {} · {} · {}",
                step.stream_version,
                step.global_position,
                step.recorded_at,
                step.event_type,
                step.hash
            )?;
            writeln!(
                out,
                "event: {}",
                serde_json::to_string_pretty(&step.payload)?
            )?;
            writeln!(out, "state: {}", serde_json::to_string_pretty(&state)?)?;
        }
    }
    Ok(())
}

fn hex_short(hash: &[u8; 32]) -> String {
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The state as of a point, as printed by `replay --as-of … --json`.
#[derive(Debug, Serialize)]
struct AsOfState<'a, S: Serialize> {
    stream_id: &'a str,
    as_of: String,
    /// Last version at or before the point (0: the stream did not exist yet).
    stream_version: u64,
    global_position: Option<u64>,
    state: &'a S,
}

/// Folds the stream's prefix up to `as_of`: its events while their global
/// position (or `recorded_at`) is at or before the point. A stream's
/// positions ascend with its versions, so this is a prefix.
fn as_of_state<D>(
    events: &[RecordedEvent],
    as_of: AsOf,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()>
where
    D: Decider,
    D::State: Serialize,
{
    let mut state = D::State::default();
    let mut last: Option<&RecordedEvent> = None;
    for e in events.iter().take_while(|e| as_of.includes(e)) {
        let event =
            ledger_core::codec::decode::<D::Event>(&e.event_type, e.schema_version, &e.payload)
                .with_context(|| {
                    format!(
                        "{} version {}: cannot decode",
                        e.stream_id, e.stream_version
                    )
                })?;
        state = D::evolve(state, &event).with_context(|| {
            format!(
                "{} version {}: the core rejects this history",
                e.stream_id, e.stream_version
            )
        })?;
        last = Some(e);
    }
    let stream_id = events.first().map_or("", |e| e.stream_id.as_str());
    let view = AsOfState {
        stream_id,
        as_of: as_of.to_string(),
        stream_version: last.map_or(0, |e| e.stream_version),
        global_position: last.map(|e| e.global_position),
        state: &state,
    };
    if json {
        writeln!(out, "{}", serde_json::to_string(&view)?)?;
    } else {
        writeln!(
            out,
            "{stream_id} as of {}: version {} of {}",
            view.as_of,
            view.stream_version,
            events.len()
        )?;
        writeln!(out, "state: {}", serde_json::to_string_pretty(&state)?)?;
    }
    Ok(())
}

/// `ledger replay <stream> --as-of <position|RFC3339>`: the chain of the
/// whole stream is checked as in [`run`], then only the state as of the
/// point is printed.
pub async fn run_as_of(
    store: &dyn EventStore,
    stream: &str,
    as_of: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let as_of = AsOf::parse(as_of)?;
    let (_stream, kind, events) = load_checked(store, stream).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match kind {
        StreamKind::Order => as_of_state::<Order>(&events, as_of, json, &mut out)?,
        StreamKind::Refund => as_of_state::<Refund>(&events, as_of, json, &mut out)?,
        StreamKind::Transfer => as_of_state::<SellerTransfer>(&events, as_of, json, &mut out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a whole stream and checks its chain and head.
async fn load_checked(
    store: &dyn EventStore,
    stream: &str,
) -> anyhow::Result<(StreamId, StreamKind, Vec<RecordedEvent>)> {
    let stream = StreamId::new(stream).map_err(|e| {
        anyhow!("{e}; pass a stream id such as order-<uuid>, refund-<uuid> or transfer-<uuid>")
    })?;
    let kind = StreamKind::of(&stream)?;
    let events = read_whole_stream(store, &stream).await?;
    if events.is_empty() {
        anyhow::bail!(
            "stream {stream} has no events; check the id (streams are order-<uuid>, refund-<uuid>, transfer-<uuid>)"
        );
    }
    let mut chain = ChainVerifier::new(&stream);
    for e in &events {
        chain.push(e)?;
    }
    // The chain can't see a missing tail; the store's own head can.
    let last = events.last().map(|e| e.stream_version);
    let head = store.stream_version(&stream).await?;
    if head != last {
        anyhow::bail!(
            "stream {stream}: the store reports version {head:?} but the last readable event is version {last:?} (events missing at the tail)"
        );
    }
    Ok((stream, kind, events))
}

pub async fn run(store: &dyn EventStore, stream: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (_stream, kind, events) = load_checked(store, stream).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match kind {
        StreamKind::Order => replay_as::<Order>(&events, json, &mut out)?,
        StreamKind::Refund => replay_as::<Refund>(&events, json, &mut out)?,
        StreamKind::Transfer => replay_as::<SellerTransfer>(&events, json, &mut out)?,
    }
    if !json {
        writeln!(out, "{} events, hash chain intact", events.len())?;
    }
    Ok(ExitCode::SUCCESS)
}
