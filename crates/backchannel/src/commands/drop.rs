//! Drop boxes. A source's side, which needs no home (`drop send`, `drop check`), and
//! the owner's, on an open engine (`drop create`, `drop address`, `drop read`,
//! `drop reply`).

use std::io::{IsTerminal, Write as _};

use backchannel_client::letter::{self, Draft};

use super::Context;
use crate::args::{CheckArgs, DropCreateArgs, DropNameArg, DropReadArgs, DropReplyArgs, Global, LetterArgs};
use crate::error::CliError;
use crate::output::{escape_controls, Out};

/// `drop send`: no home, no identity; only the address, the text and the network.
pub async fn send(global: &Global, a: &LetterArgs, out: &Out) -> Result<(), CliError> {
    if global.proxy.is_none() && !a.direct {
        return Err(CliError::NeedsProxy("send"));
    }
    let mut draft = Draft::new(&a.address, a.text.clone(), a.file.as_deref())?;
    let terminal = out.is_terminal();
    let bits = draft.resolve(global.proxy.as_ref()).await?;
    let receipt = draft
        .send(global.proxy.as_ref(), |i, n| {
            if terminal && i < n {
                eprint!(
                    "\rsealing; proof of work ({bits} bits) for envelope {} of {n}...",
                    i + 1
                );
            } else if terminal {
                eprintln!();
            }
        })
        .await?;
    out.line(receipt.to_text());
    out.eline(
        "letter delivered. Keep the receipt above secret: it is the only way to read a reply \
         (`backchannel drop check RECEIPT`), and whoever holds it can read the reply too.",
    );
    Ok(())
}

/// `drop check`: shows the replies to a letter with its receipt, and deletes them
/// from the relay.
pub async fn check(global: &Global, a: &CheckArgs, out: &Out) -> Result<(), CliError> {
    if global.proxy.is_none() && !a.direct {
        return Err(CliError::NeedsProxy("check"));
    }
    let text = match &a.receipt {
        Some(r) => r.clone(),
        None => {
            if std::io::stdin().is_terminal() {
                out.eline("receipt (bc-receipt:...):");
            }
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(CliError::ReadReceipt)?;
            line
        }
    };
    let receipt = letter::read_receipt(&text)?;
    let mut stdout = std::io::stdout();
    let shown = letter::check_replies(&receipt, global.proxy.as_ref(), |reply| {
        // On the screen (or in the pipe) before the relay deletes it.
        writeln!(stdout, "{}", escape_controls(reply))?;
        stdout.flush()
    })
    .await?;
    if shown == 0 {
        out.eline("no new reply; replies already shown are deleted from the relay");
    }
    Ok(())
}

/// `drop create`: the address on stdout.
pub async fn create(a: &DropCreateArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let name = &a.name;
    let address = cx.engine.drop_create(name, a.pow_bits).await?;
    cx.out.line(&address);
    cx.out.eline(format!(
        "drop box {name} created: publish this address; anyone can leave a sealed letter with \
         `backchannel drop send ADDRESS TEXT`, and `backchannel drop read {name}` shows them (each \
         read keeps the short address alive at the relay for 90 days; `drop address {name} --long` \
         prints the whole address, which needs nothing from the relay)"
    ));
    Ok(())
}

/// `drop address`: the short address (its keys published again at the relay), or with
/// `--long` the whole one, which needs nothing from the relay.
pub async fn address(a: &DropNameArg, cx: &mut Context<'_>) -> Result<(), CliError> {
    if a.long {
        cx.out.line(cx.engine.drop_address(&a.name)?);
    } else {
        cx.out.line(cx.engine.drop_short_address(&a.name).await?);
    }
    Ok(())
}

/// `drop read`: the letters, their attached files saved into `--save-to`.
pub async fn read(a: &DropReadArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    if let Err(e) = cx.engine.refresh().await {
        cx.out
            .eline(format!("warning: could not sync ({e}); showing what is stored"));
    } else if let Err(e) = cx.engine.drop_short_address(&a.name).await {
        // The letters are there all the same; the short address lives on until it expires.
        cx.out.eline(format!(
            "warning: the drop box's short address was not renewed at its relay: {e}"
        ));
    }
    for l in cx.engine.drop_read(&a.name, a.all, &cx.cwd.join(&a.save_to))? {
        if a.json {
            cx.out.line(serde_json::json!({
                "id": l.id, "drop": l.drop, "received_at": l.received_at,
                "text": l.text, "file": l.file, "can_reply": l.can_reply,
            }));
        } else {
            let reply = if l.can_reply { "" } else { " (no reply possible)" };
            cx.out.line(format!(
                "[{}] letter {}{reply}: {}",
                l.received_at,
                l.id,
                escape_controls(&l.text)
            ));
            if let Some(f) = &l.file {
                cx.out.line(format!("  attached file saved as {f}"));
            }
        }
    }
    Ok(())
}

/// `drop reply`.
pub async fn reply(a: &DropReplyArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    // Offline, the reply is queued like any message (drop_reply says so).
    if let Err(e) = cx.engine.refresh().await {
        cx.out.eline(format!("warning: could not sync ({e})"));
    }
    cx.engine.drop_reply(&a.name, &a.id, &a.text).await?;
    cx.out.line("reply sent; its source reads it with its receipt");
    Ok(())
}
