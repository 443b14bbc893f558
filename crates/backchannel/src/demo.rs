//! `backchannel demo`: a relay on loopback and three parties, end to end.

use std::time::Duration;

use backchannel_client::engine::Lifetime;
use backchannel_client::Engine;
use backchannel_core::channel::Suite;
use backchannel_core::envelope::ENVELOPE_SIZE;
use backchannel_core::relay_address::RelayAddress;
use backchannel_core::vault::KdfParams;
use backchannel_relay::store::MailboxStore as _;
use backchannel_relay::{Limits, Relay};

const PASS: &[u8] = b"demo passphrase";

fn show(title: &str, engine: &mut Engine, channel: &str) -> Result<(), Box<dyn std::error::Error>> {
    println!("\n--- what {title} sees in {channel} ---");
    for m in engine.read(channel, true)? {
        let msg = m.message;
        match msg.event {
            None => println!("  {}: {}", msg.from, msg.text),
            Some(_) => println!("  * {}", msg.text),
        }
    }
    Ok(())
}

/// Runs the demo.
pub async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::open(dir.path().join("relay"), Limits::default())?;
    let store = relay.store();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let address = RelayAddress {
        pin: relay.pin().0,
        host: "127.0.0.1".into(),
        port,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay.serve(listener, async {
        let _ = stop_rx.await;
    }));
    println!("relay address: {address}");
    println!(
        "(a relay on loopback, storing only sealed {ENVELOPE_SIZE}-byte envelopes in {})",
        dir.path().display()
    );

    // Side A: Alice and Amir. Side B: Bruno.
    let mut homes = Vec::new();
    for name in ["alice", "amir", "bruno"] {
        let home = dir.path().join(name);
        let fp = Engine::init(
            &home,
            PASS,
            name,
            vec![address.clone()],
            None,
            true,
            KdfParams::default(),
        )
        .await?;
        println!("{name} created an identity, fingerprint {fp}");
        homes.push(home);
    }
    let mut alice = Engine::open(&homes[0], PASS)?;
    let mut amir = Engine::open(&homes[1], PASS)?;
    let mut bruno = Engine::open(&homes[2], PASS)?;

    alice
        .channel_new("deal-room", Suite::PostQuantum, Lifetime::default(), false, false)
        .await?;
    println!("\nalice created channel deal-room (MLS, X-Wing post-quantum hybrid)");
    let invite = alice.invite("deal-room", 2, Duration::from_secs(3600), false).await?;
    println!("alice's invite: {}...", &invite[..40.min(invite.len())]);
    bruno.join(&invite, None, Duration::ZERO).await?;
    amir.join(&invite, None, Duration::ZERO).await?;
    println!("bruno and amir redeemed the invite");
    alice.sync(Duration::ZERO).await?;
    println!("alice's client admitted them on its next sync");
    bruno.sync(Duration::from_secs(5)).await?;
    amir.sync(Duration::from_secs(5)).await?;
    alice.sync(Duration::ZERO).await?;

    alice.send("deal-room", "Our board accepts the revised terms.").await?;
    bruno.sync(Duration::from_secs(5)).await?;
    bruno.send("deal-room", "Good. We sign on Friday, not before.").await?;
    amir.sync(Duration::from_secs(5)).await?;
    amir.send("deal-room", "Noted. Drafts follow by courier.").await?;
    alice.sync(Duration::from_secs(2)).await?;
    bruno.sync(Duration::from_secs(2)).await?;

    let (number, _) = alice.verify("deal-room", "bruno", true)?;
    let (number_b, _) = bruno.verify("deal-room", "alice", true)?;
    println!("\nsafety number alice<->bruno, as alice computes it: {number}");
    println!("safety number alice<->bruno, as bruno computes it: {number_b}");

    let removed = alice.remove("deal-room", "amir").await?;
    println!("\nalice removed {removed}");
    alice.send("deal-room", "Amir is off the channel from here on.").await?;
    bruno.sync(Duration::from_secs(5)).await?;
    amir.sync(Duration::from_secs(2)).await?;

    show("alice", &mut alice, "deal-room")?;
    show("bruno", &mut bruno, "deal-room")?;
    show("amir", &mut amir, "deal-room")?;

    let stats = store.stats().await?;
    println!(
        "\nthe relay holds {} mailboxes and {} envelopes ({} bytes, every envelope exactly {ENVELOPE_SIZE} bytes); no names, no channel names, no plaintext",
        stats.mailboxes,
        stats.envelopes,
        stats.envelopes * ENVELOPE_SIZE as u64
    );
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(())
}
