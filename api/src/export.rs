//! `ledger export --format jsonl [--stream S] [--from POSITION]`: stored
//! events, byte-exact, one JSON object per line, for auditors.
//!
//! **Guarantees:** `payload` and `metadata` are the stored strings, emitted as
//! JSON strings (never re-serialised objects), so unescaping them gives back
//! the exact bytes that were hashed. `recorded_at` is RFC3339 with
//! microseconds, the precision the hash covers.
//!
//! **Re-verifying a line** (what `tests/tests/audit.rs` does):
//! `content = sha256(f("ledger-event-v1") ‖ f(stream) ‖ f(event_id as 16
//! bytes) ‖ f(type) ‖ f(u32be(schema_version)) ‖ f(payload) ‖ f(metadata) ‖
//! f(i64be(recorded_at in µs since the epoch)))` with `f(b) = u64be(len(b)) ‖ b`,
//! then `hash = sha256(prev_hash ‖ u64be(version) ‖ content)`; a stream's
//! first `prev_hash` is 32 zero bytes and each next one is the previous
//! line's `hash` (see `ledger_core::hash`).

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use chrono::SecondsFormat;
use ledger_core::ids::StreamId;
use ledger_core::{Checkpoint, RecordedEvent};
use ledger_store::{EventStore, READ_BATCH_MAX};
use serde::{Deserialize, Serialize};

/// One exported event. Field order is the line's order; a storage contract
/// for auditors' tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportLine {
    pub position: u64,
    pub commit: u64,
    pub stream: String,
    pub version: u64,
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u32,
    pub payload: String,
    pub metadata: String,
    pub recorded_at: String,
    pub prev_hash: String,
    pub hash: String,
}

impl ExportLine {
    pub fn of(e: &RecordedEvent) -> ExportLine {
        ExportLine {
            position: e.global_position,
            commit: e.commit,
            stream: e.stream_id.to_string(),
            version: e.stream_version,
            event_id: e.event_id.to_string(),
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            payload: e.payload.clone(),
            metadata: e.metadata.clone(),
            recorded_at: e.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            prev_hash: hex(&e.prev_hash),
            hash: hex(&e.hash),
        }
    }

    /// Back to the stored envelope (for re-verification).
    pub fn to_recorded(&self) -> anyhow::Result<RecordedEvent> {
        let hash = |h: &str| -> anyhow::Result<[u8; 32]> {
            let bytes: Vec<u8> = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(h.get(i..i + 2).unwrap_or("zz"), 16))
                .collect::<Result<_, _>>()
                .context("hash is not hex")?;
            bytes
                .try_into()
                .map_err(|_| anyhow!("hash is not 32 bytes"))
        };
        Ok(RecordedEvent {
            global_position: self.position,
            commit: self.commit,
            stream_id: StreamId::new(self.stream.clone())?,
            stream_version: self.version,
            event_id: ledger_core::ids::EventId(self.event_id.parse()?),
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            payload: self.payload.clone(),
            metadata: self.metadata.clone(),
            recorded_at: chrono::DateTime::parse_from_rfc3339(&self.recorded_at)?.to_utc(),
            prev_hash: hash(&self.prev_hash)?,
            hash: hash(&self.hash)?,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the selected events as JSONL to `out`; returns how many.
pub async fn export(
    store: &dyn EventStore,
    stream: Option<&str>,
    from_position: u64,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let mut written = 0u64;
    let mut emit = |page: &[RecordedEvent], out: &mut dyn Write| -> anyhow::Result<()> {
        for e in page.iter().filter(|e| e.global_position >= from_position) {
            serde_json::to_writer(&mut *out, &ExportLine::of(e))?;
            out.write_all(b"\n")?;
            written += 1;
        }
        Ok(())
    };
    match stream {
        Some(s) => {
            let stream = StreamId::new(s).map_err(|e| anyhow!("{e}; pass a stream id"))?;
            let mut from = 1;
            loop {
                let page = store.read_stream(&stream, from, READ_BATCH_MAX).await?;
                let Some(last) = page.last() else { break };
                from = last.stream_version + 1;
                emit(&page, out)?;
            }
        }
        None => {
            // Feed order (the commit order); `--from` filters by position,
            // which on Postgres is not the feed's order key.
            let mut after = Checkpoint::START;
            loop {
                let page = store.read_all(after, READ_BATCH_MAX).await?;
                let Some(last) = page.last() else { break };
                after = last.checkpoint();
                emit(&page, out)?;
            }
        }
    }
    out.flush()?;
    Ok(written)
}

pub async fn run(
    store: &dyn EventStore,
    stream: Option<&str>,
    from_position: u64,
) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let n = export(store, stream, from_position, &mut out).await?;
    drop(out);
    eprintln!("exported {n} events");
    Ok(ExitCode::SUCCESS)
}
