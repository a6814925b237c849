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

pub async fn run(store: &dyn EventStore, stream: &str, json: bool) -> anyhow::Result<ExitCode> {
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
