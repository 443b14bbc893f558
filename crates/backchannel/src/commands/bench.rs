//! `bench relay`, `bench connections` and `bench forward`: the glue between their arguments and the
//! load generator (`crate::bench`).

use crate::args::{BenchCommand, BenchConnectionsArgs, BenchForwardArgs, BenchRelayArgs, StoreKind};
use crate::bench;
use crate::error::CliError;
use crate::output::Out;

/// Runs a benchmark and prints its report: one JSON object, or a `key: value` line each.
pub async fn run(what: &BenchCommand, out: &Out) -> Result<(), CliError> {
    let (report, json) = match what {
        BenchCommand::Relay(a) => (relay(a).await?, a.json),
        BenchCommand::Connections(BenchConnectionsArgs { count, json }) => {
            (bench::connections(*count).await.map_err(CliError::Bench)?, *json)
        }
        BenchCommand::Forward(BenchForwardArgs { messages, json }) => {
            (bench::forward(*messages).await.map_err(CliError::Bench)?, *json)
        }
    };
    if json {
        out.line(report);
    } else if let Some(obj) = report.as_object() {
        for (k, v) in obj {
            out.line(format!("{k}: {v}"));
        }
    }
    Ok(())
}

async fn relay(a: &BenchRelayArgs) -> Result<serde_json::Value, CliError> {
    a.storage.check(Some(a.relays))?;
    let store = match a.storage.store {
        StoreKind::Embedded => bench::Store::Embedded,
        StoreKind::Nats => bench::Store::Nats {
            urls: a.storage.nats.clone(),
            replicas: a.storage.nats_replicas,
            meta_bytes: a.storage.nats_meta_bytes,
        },
    };
    let settings = bench::RelayBench {
        store,
        relays: a.relays,
        clients: a.clients,
        messages: a.messages,
        window: a.window,
        rate: a.rate,
        idle_mailboxes: a.idle_mailboxes,
        idle_connections: a.idle_connections,
    };
    bench::relay(&settings).await.map_err(CliError::Bench)
}
